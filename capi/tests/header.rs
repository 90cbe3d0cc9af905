//! `include/qlift.h` is what cbindgen generates from `src/lib.rs`: regenerated here and
//! compared. `QLIFT_BLESS=1 cargo test -p qlift-capi --test header` rewrites it.

use std::path::PathBuf;

#[test]
fn the_checked_in_header_is_what_cbindgen_generates() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config =
        cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("capi/cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).expect("UTF-8 header");
    let path = dir.join("include/qlift.h");
    if std::env::var_os("QLIFT_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("writing include/qlift.h");
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "capi/include/qlift.h is out of date with capi/src/lib.rs: run `QLIFT_BLESS=1 cargo test -p qlift-capi --test header` and commit it"
    );
}
