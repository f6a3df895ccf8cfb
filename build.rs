//! Links agd against the libtorch that torch-sys found, so that the binary runs as built:
//! - embeds libtorch's library folder as an rpath, so `agd` starts without
//!   `LD_LIBRARY_PATH` (torch-sys declares `links = "tch"` and reports the folder, which
//!   cargo hands to its direct dependents as `DEP_TCH_LIBTORCH_LIB`);
//! - keeps `libtorch_cuda` as a real dependency when the libtorch has one: nothing in agd
//!   names a CUDA symbol, so the default `--as-needed` linking would drop it and CUDA would
//!   silently be unavailable on a GPU machine.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report libtorch's folder; set LD_LIBRARY_PATH at run time");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    let dir = std::path::Path::new(&dir);
    for lib in ["torch_cuda", "torch_hip"] {
        if dir.join(format!("lib{lib}.so")).exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-l{lib},--as-needed");
        }
    }
}
