//! Build script: export only the SPANK symbols from the plugin (linker version script).

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".to_owned());
    let script = format!("{dir}/exports.map");
    println!("cargo:rerun-if-changed={script}");
    println!("cargo:rustc-cdylib-link-arg=-Wl,--version-script={script}");
    // slurm-spank marks its option trampoline #[no_mangle]; it is reached through a pointer
    // only, so keep it (and anything else from dependency rlibs) out of the dynamic table.
    println!("cargo:rustc-cdylib-link-arg=-Wl,--exclude-libs,ALL");
}
