//! Links agd against the libtorch that torch-sys found, so that the binary runs as built:
//! - embeds libtorch's library folder as an rpath, so `agd` starts without
//!   `LD_LIBRARY_PATH` (torch-sys declares `links = "tch"` and reports the folder, which
//!   cargo hands to its direct dependents as `DEP_TCH_LIBTORCH_LIB`), after the folders
//!   in `AGD_RPATH` (a binary built for another machine's torch);
//! - keeps `libtorch_cuda` as a real dependency when the libtorch has one: nothing in agd
//!   names a CUDA symbol, so the default `--as-needed` linking would drop it and CUDA would
//!   silently be unavailable on a GPU machine;
//! - records the libtorch's version and the CUDA it was built for (`AGD_TORCH_VERSION`,
//!   `AGD_TORCH_CUDA`), so that `-g 0` on a GPU this libtorch cannot drive says which
//!   CUDA it needed instead of falling back to the CPU silently (src/device.rs).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    // A binary built here to run on another machine (scripts/build-for-torch): that
    // machine's torch library folder first.
    println!("cargo:rerun-if-env-changed=AGD_RPATH");
    if let Ok(extra) = std::env::var("AGD_RPATH") {
        for dir in extra.split(':').filter(|d| !d.is_empty()) {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        }
    }
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report libtorch's folder; set LD_LIBRARY_PATH at run time");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    let dir = std::path::Path::new(&dir);
    let (version, cuda) = torch_version(dir);
    println!("cargo:rustc-env=AGD_TORCH_VERSION={version}");
    if let Some(cuda) = cuda {
        println!("cargo:rustc-env=AGD_TORCH_CUDA={cuda}");
    }
    shim(dir);
    for lib in ["torch_cuda", "torch_hip"] {
        if dir.join(format!("lib{lib}.so")).exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-l{lib},--as-needed");
        }
    }
}

/// Compiles src/shim/context.cpp against the libtorch's headers (`<lib>/../include`): the
/// switches of ATen's global context that tch has no binding for.
fn shim(lib: &std::path::Path) {
    // Next to this file, also when scripts/build-for-torch builds from another manifest.
    let source = std::path::Path::new(file!())
        .parent()
        .unwrap_or(std::path::Path::new(""))
        .join("src/shim/context.cpp");
    println!("cargo:rerun-if-changed={}", source.display());
    let include = lib
        .parent()
        .map(|root| root.join("include"))
        .unwrap_or_default();
    cc::Build::new()
        .cpp(true)
        .file(&source)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("agd_shim");
    dist_shim(lib, &include);
}

/// Compiles src/shim/dist.cpp, the c10d process group of data-parallel runs (src/dist/),
/// against the libtorch's c10d headers and gloo's (vendored: the wheel ships none), with
/// the Gloo backend's class bodies compiled in (`USE_C10D_GLOO`); and src/shim/nccl.cpp,
/// the NCCL backend, where the libtorch has CUDA ([`nccl_includes`]).
fn dist_shim(lib: &std::path::Path, include: &std::path::Path) {
    let here = std::path::Path::new(file!())
        .parent()
        .unwrap_or(std::path::Path::new(""))
        .to_path_buf();
    let source = here.join("src/shim/dist.cpp");
    let nccl_source = here.join("src/shim/nccl.cpp");
    for s in [&source, &nccl_source] {
        println!("cargo:rerun-if-changed={}", s.display());
    }
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file(&source)
        .include(include)
        .include(include.join("torch/csrc/api/include"))
        .include(here.join("vendor/gloo"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .define("USE_C10D_GLOO", None)
        .warnings(false)
        .flag_if_supported("-w");
    if let Some(cuda) = nccl_includes(lib) {
        build
            .file(&nccl_source)
            .define("USE_C10D_NCCL", None)
            .define("AGD_NCCL", None);
        for dir in cuda {
            build.include(dir);
        }
        println!("cargo:rustc-cfg=agd_nccl");
    }
    println!("cargo::rustc-check-cfg=cfg(agd_nccl)");
    build.compile("agd_dist");
}

/// The include folders c10d's NCCL header needs, when this libtorch can run NCCL: a CUDA
/// libtorch (`libtorch_cuda.so`) from a wheel whose CUDA packages hold the runtime's and
/// NCCL's headers, with `crt/host_config.h` and `nv/target` beside them (PyPI's
/// `nvidia-cuda-crt` and `nvidia-cuda-cccl`, which scripts/with-libtorch installs).
/// `None` builds agd without NCCL (`--dist-backend nccl` then says so).
fn nccl_includes(lib: &std::path::Path) -> Option<Vec<std::path::PathBuf>> {
    if !lib.join("libtorch_cuda.so").exists() {
        return None;
    }
    // <site-packages>/torch/lib → <site-packages>/nvidia/{cu13,nccl}/include
    let nvidia = lib.parent()?.parent()?.join("nvidia");
    let nccl = nvidia.join("nccl/include");
    let cuda = std::fs::read_dir(&nvidia)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("include")))
        .find(|d| d.join("cuda_runtime.h").exists())?;
    let complete = nccl.join("nccl.h").exists()
        && cuda.join("crt/host_config.h").exists()
        && cuda.join("nv/target").exists();
    if !complete {
        println!(
            "cargo:warning=building without NCCL: {} lacks nccl.h, crt/host_config.h or nv/target \
             (scripts/with-libtorch installs them)",
            nvidia.display()
        );
        return None;
    }
    Some(vec![cuda, nccl])
}

/// The version and CUDA version of the libtorch in `lib`: a PyPI torch's `version.py`
/// (`__version__ = '2.13.0'`, `cuda: Optional[str] = '13.0'`), or a libtorch zip's
/// `build-version` (`2.13.0+cu130`).
fn torch_version(lib: &std::path::Path) -> (String, Option<String>) {
    let Some(root) = lib.parent() else {
        return ("unknown".into(), None);
    };
    let quoted = |line: &str| line.split('\'').nth(1).map(str::to_string);
    if let Ok(py) = std::fs::read_to_string(root.join("version.py")) {
        println!(
            "cargo:rerun-if-changed={}",
            root.join("version.py").display()
        );
        let field = |name: &str| py.lines().find(|l| l.starts_with(name)).and_then(quoted);
        let version = field("__version__").unwrap_or_else(|| "unknown".into());
        return (version, field("cuda"));
    }
    if let Ok(v) = std::fs::read_to_string(root.join("build-version")) {
        let v = v.trim().to_string();
        // cu130 → 13.0, cu126 → 12.6.
        let cuda = v.split_once("+cu").and_then(|(_, d)| {
            (d.len() >= 2 && d.bytes().all(|b| b.is_ascii_digit()))
                .then(|| format!("{}.{}", &d[..d.len() - 1], &d[d.len() - 1..]))
        });
        return (v, cuda);
    }
    ("unknown".into(), None)
}
