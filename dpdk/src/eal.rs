//! The Environment Abstraction Layer: started once per process, from
//! arguments (`--no-huge --no-pci --vdev ...` in tests, `-a <pci>` with an
//! SR-IOV virtual function in production).

use std::ffi::{CStr, CString};
use std::sync::OnceLock;

/// A DPDK call failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{what}: {message} (rte_errno {code})")]
pub struct EalError {
    /// The call.
    pub what: String,
    /// DPDK's description of the error.
    pub message: String,
    /// The error number.
    pub code: i32,
}

impl EalError {
    /// The error `code` (a negative return value or `rte_errno`) of `what`.
    pub fn from_code(what: impl Into<String>, code: i32) -> EalError {
        let code = code.abs();
        // SAFETY: rte_strerror returns a pointer to a static or thread-local
        // NUL-terminated string, valid until the next call on this thread.
        let message =
            unsafe { CStr::from_ptr(fulva_dpdk_sys::fulva_strerror(code)) }.to_string_lossy().into_owned();
        EalError { what: what.into(), message, code }
    }

    /// The calling thread's `rte_errno` after `what` failed.
    pub fn last(what: impl Into<String>) -> EalError {
        // SAFETY: reads the calling thread's rte_errno.
        let code = unsafe { fulva_dpdk_sys::fulva_errno() };
        EalError::from_code(what, code)
    }
}

/// The running EAL. DPDK allows one initialisation per process, so this is
/// a process-wide singleton; it is never cleaned up (DPDK forbids re-init).
pub struct Eal {
    args: Vec<String>,
}

static EAL: OnceLock<Result<Eal, EalError>> = OnceLock::new();

impl Eal {
    /// Starts the EAL with `args` (without the program name), or returns the
    /// one already running. Later calls must pass the same arguments.
    pub fn init(args: &[String]) -> Result<&'static Eal, EalError> {
        let eal = EAL.get_or_init(|| {
            let mut owned: Vec<CString> = std::iter::once("fulva".to_string())
                .chain(args.iter().cloned())
                .map(|a| CString::new(a).map_err(|_| EalError::from_code("EAL argument with a NUL byte", 22)))
                .collect::<Result<_, _>>()?;
            let mut argv: Vec<*mut libc::c_char> =
                owned.iter_mut().map(|a| a.as_ptr() as *mut libc::c_char).collect();
            // SAFETY: argv holds argc valid NUL-terminated strings that outlive
            // the call (rte_eal_init may permute the pointer array, which we
            // own, but does not free or keep the strings).
            let rc = unsafe { fulva_dpdk_sys::fulva_eal_init(argv.len() as libc::c_int, argv.as_mut_ptr()) };
            if rc < 0 {
                return Err(EalError::last("rte_eal_init"));
            }
            Ok(Eal { args: args.to_vec() })
        });
        match eal {
            Ok(eal) if eal.args == args => Ok(eal),
            Ok(eal) => Err(EalError {
                what: "rte_eal_init".into(),
                message: format!("the EAL already runs with {:?}", eal.args),
                code: 114,
            }),
            Err(err) => Err(err.clone()),
        }
    }

    /// The arguments it started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Ethernet ports DPDK found (devices and vdevs).
    pub fn port_count(&self) -> u16 {
        // SAFETY: the EAL is initialised (self exists).
        unsafe { fulva_dpdk_sys::fulva_port_count() }
    }
}
