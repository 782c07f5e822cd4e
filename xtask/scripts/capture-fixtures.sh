#! Runs in the guest (after the prelude): builds a small pool with the shapes cairn uses
#! and prints the scripted output of each command between CAIRN-FIXTURE/CAIRN-END markers.
#! `cargo xtask capture-fixtures` turns them into files under crates/cairn-zfs/fixtures/.
set -u
cap() { name=$1; shift; { echo "CAIRN-FIXTURE $name"; "$@" 2>&1; echo "CAIRN-END"; } >> $R; }
truncate -s 512M /scratch/vdev
zpool create -f -m /scratch/mnt -O compression=off fx /scratch/vdev
zfs create -p -o canmount=noauto -o mountpoint=/scratch/be -o cairn:version=1.0 fx/ROOT/v1
zfs create -p fx/CONFIG/v1
zfs create -p fx/DATA/app
zfs mount fx/ROOT/v1
dd if=/dev/urandom of=/scratch/be/app bs=64k count=16 2>/dev/null
echo one > /scratch/be/old; echo keep > /scratch/be/same
zfs snapshot -o cairn:reason=factory fx/ROOT/v1@factory fx/CONFIG/v1@factory fx/DATA/app@factory
zfs hold cairn:factory fx/ROOT/v1@factory fx/CONFIG/v1@factory
echo two > /scratch/be/new; rm /scratch/be/old; echo changed >> /scratch/be/same
touch "/scratch/be/with space"
zfs snapshot fx/ROOT/v1@s2
zfs clone -o cairn:version=2.0 -o canmount=noauto fx/ROOT/v1@factory fx/ROOT/v2
zpool set bootfs=fx/ROOT/v1 fx
zpool sync fx
cap list-all.txt zfs list -H -p -o name,type,used,referenced,origin,createtxg,cairn:version -t filesystem,volume,snapshot -r fx
cap list-depth1.txt zfs list -H -p -o name,type,cairn:version -t filesystem,snapshot -d 1 fx/ROOT
cap get-user.txt zfs get -H -p -o property,value,source cairn:version,cairn:unset,mountpoint,canmount,origin,guid fx/ROOT/v2
cap get-inherited.txt zfs get -H -p -o property,value,source mountpoint,compression,cairn:reason fx/ROOT/v1@factory
cap holds.txt zfs holds -H -p fx/ROOT/v1@factory fx/CONFIG/v1@factory
cap send-full-estimate.txt zfs send -L -c -n -v -P fx/ROOT/v1@factory
cap send-incremental-estimate.txt zfs send -L -c -i fx/ROOT/v1@factory -n -v -P fx/ROOT/v1@s2
cap destroy-dry-run.txt zfs destroy -n -v -p fx/ROOT/v1@s2
cap destroy-dry-run-recursive.txt zfs destroy -n -v -p -r fx/DATA
cap diff.txt zfs diff -H -F fx/ROOT/v1@factory fx/ROOT/v1@s2
cap zpool-get.txt zpool get -H -p -o property,value guid,size,allocated,free,health,bootfs fx
cap zfs-version.txt zfs version
cap destroy-dry-run-fs.txt zfs destroy -n -v -p fx/ROOT/v2
# refusals, for the error mapping
cap err-destroy-held.txt zfs destroy fx/CONFIG/v1@factory
cap err-destroy-clone-origin.txt zfs destroy fx/ROOT/v1@factory
cap err-destroy-children.txt zfs destroy fx/ROOT
cap err-missing.txt zfs list fx/nope
cap err-exists.txt zfs create fx/ROOT/v2
cap err-rollback-newer.txt zfs rollback fx/ROOT/v1@factory
cap err-promote-nonclone.txt zfs promote fx/ROOT/v1
cap err-hold-twice.txt zfs hold cairn:factory fx/ROOT/v1@factory
cap err-release-unknown.txt zfs release nosuch fx/ROOT/v1@factory
cap err-too-long.txt zfs create fx/$(printf 'x%.0s' $(seq 1 260))
cap err-bad-char.txt zfs create 'fx/a*b'
# receiving the same incremental twice (the second is a no-op that succeeds)
zfs send fx/ROOT/v1@factory | zfs receive fx/copy
zfs send -i fx/ROOT/v1@factory fx/ROOT/v1@s2 | zfs receive fx/copy
cap recv-incremental-twice.txt sh -c 'zfs send -i fx/ROOT/v1@factory fx/ROOT/v1@s2 | zfs receive -v fx/copy; echo "exit $?"; zfs list -H -o name -t snapshot -r fx/copy'
zpool destroy fx
