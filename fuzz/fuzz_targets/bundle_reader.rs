//! Fuzzes the bundle reader: headers, sections and payload framing from arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(mut r) = cairn_bundle::BundleReader::open(std::io::BufReader::new(data)) {
        let _ = r.check_payloads();
    }
});
