//! Finds the system DPDK with pkg-config and compiles the C shim against it.

fn main() {
    println!("cargo:rerun-if-changed=shim/shim.c");
    let dpdk = match pkg_config::Config::new().atleast_version("22.11").probe("libdpdk") {
        Ok(lib) => lib,
        Err(err) => panic!(
            "DPDK 22.11 or newer was not found with pkg-config ({err}).\n\
             Install it (Debian/Ubuntu: apt-get install libdpdk-dev pkg-config), or build without the `dpdk` feature."
        ),
    };
    let mut build = cc::Build::new();
    build.file("shim/shim.c").warnings(false).flag_if_supported("-Wno-deprecated-declarations");
    for path in &dpdk.include_paths {
        build.include(path);
    }
    // pkg-config's cflags carry `-include rte_config.h` and the target's -march.
    for (name, value) in &dpdk.defines {
        build.define(name, value.as_deref());
    }
    build.flag("-include").flag("rte_config.h");
    build.flag_if_supported("-march=corei7");
    build.compile("fulva_dpdk_shim");
}
