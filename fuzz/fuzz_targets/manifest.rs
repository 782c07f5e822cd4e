//! Fuzzes the manifest parser: any bytes give a manifest or a named error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(m) = cairn_bundle::Manifest::parse(data) {
        // What parses must serialize and parse back to the same manifest.
        let again = cairn_bundle::Manifest::parse(m.to_yaml().as_bytes()).expect("round trip");
        assert_eq!(again, m);
    }
});
