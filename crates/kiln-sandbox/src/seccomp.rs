//! The seccomp filter installed on every sandboxed command.
//!
//! It denies what builds and tests never need and what would let a command
//! attack the kernel or its neighbours: tracing other processes, mounting,
//! kernel keyrings, bpf, loading kernels or modules, perf events, io_uring
//! (whose operations bypass seccomp), creating or entering namespaces,
//! vsock sockets, and setting the setuid or setgid bit on a file (chmod, or
//! creating it with that mode).
//! `clone3` and `openat2` answer ENOSYS rather than EPERM: their flags and
//! mode live in memory a BPF filter cannot inspect, and ENOSYS makes libc
//! fall back to `clone` and `openat`, whose arguments the filter does check.

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::SandboxError;

/// Syscalls answered with EPERM whatever their arguments.
const DENIED: &[(&str, libc::c_long)] = &[
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("bpf", libc::SYS_bpf),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("syslog", libc::SYS_syslog),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    #[cfg(target_arch = "x86_64")]
    ("iopl", libc::SYS_iopl),
    #[cfg(target_arch = "x86_64")]
    ("ioperm", libc::SYS_ioperm),
];

/// `clone` flags that create namespaces.
const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWCGROUP,
];

/// fchmodat2 (Linux 6.6) has the same number on every architecture;
/// libc does not name it for all of them yet.
const SYS_FCHMODAT2: libc::c_long = 452;

/// Mode bits that make an executable run as its owner or group. The
/// sandbox's uid is the host's uid kiln runs as (root, on a server): a
/// setuid file it leaves in a checkout or upper layer would be a setuid-root
/// binary on the host for any local user.
const PRIVILEGE_BITS: [u64; 2] = [libc::S_ISUID as u64, libc::S_ISGID as u64];

/// Where the mode is among a syscall's arguments, and for the open family
/// where the flags are (the mode only counts when they create a file).
struct ModeArgument {
    nr: libc::c_long,
    mode_index: u8,
    creating_flags_index: Option<u8>,
}

/// Every syscall that sets a file's mode from an argument.
fn mode_setting_syscalls() -> Vec<ModeArgument> {
    let plain = |nr, mode_index| ModeArgument {
        nr,
        mode_index,
        creating_flags_index: None,
    };
    let opening = |nr, flags_index, mode_index| ModeArgument {
        nr,
        mode_index,
        creating_flags_index: Some(flags_index),
    };
    let mut calls = vec![
        plain(libc::SYS_fchmod, 1),
        plain(libc::SYS_fchmodat, 2),
        plain(SYS_FCHMODAT2, 2),
        plain(libc::SYS_mkdirat, 2),
        plain(libc::SYS_mknodat, 2),
        opening(libc::SYS_openat, 2, 3),
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        plain(libc::SYS_chmod, 1),
        plain(libc::SYS_mkdir, 1),
        plain(libc::SYS_mknod, 1),
        plain(libc::SYS_creat, 1),
        opening(libc::SYS_open, 1, 2),
    ]);
    calls
}

/// Rules matching a mode argument with the setuid or setgid bit (and, for
/// the open family, flags that create a file: `O_CREAT` or `O_TMPFILE`).
fn mode_rules() -> Result<Vec<(i64, Vec<SeccompRule>)>, seccompiler::BackendError> {
    let has = |index: u8, bits: u64| {
        SeccompCondition::new(
            index,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(bits),
            bits,
        )
    };
    // O_TMPFILE includes O_DIRECTORY; only its own bit means "create".
    let creating = [
        libc::O_CREAT as u64,
        (libc::O_TMPFILE & !libc::O_DIRECTORY) as u64,
    ];
    let mut all = Vec::new();
    for call in mode_setting_syscalls() {
        let mut rules = Vec::new();
        for bit in PRIVILEGE_BITS {
            match call.creating_flags_index {
                None => rules.push(SeccompRule::new(vec![has(call.mode_index, bit)?])?),
                Some(flags_index) => {
                    for flag in creating {
                        rules.push(SeccompRule::new(vec![
                            has(flags_index, flag)?,
                            has(call.mode_index, bit)?,
                        ])?);
                    }
                }
            }
        }
        all.push((call.nr, rules));
    }
    Ok(all)
}

/// `socket(AF_VSOCK, …)`: a channel to the hypervisor or other VMs on the
/// host, which no build or test needs.
fn vsock_rules() -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    let vsock = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::AF_VSOCK as u64,
    )?;
    Ok(vec![SeccompRule::new(vec![vsock])?])
}

/// The filters compiled to raw BPF, ready to hand to bubblewrap.
#[derive(Debug, Clone)]
pub(crate) struct CompiledFilters {
    programs: Vec<Vec<u8>>,
}

impl CompiledFilters {
    pub fn build() -> Result<Self, SandboxError> {
        let arch = target_arch()?;
        let err = |e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string());

        let mut deny: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for (_, nr) in DENIED {
            deny.insert(*nr, Vec::new());
        }
        // clone's flags are its first argument on x86_64 and aarch64 alike.
        let clone_rules = NAMESPACE_FLAGS
            .iter()
            .map(|flag| {
                let cond = SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(*flag as u64),
                    *flag as u64,
                )?;
                SeccompRule::new(vec![cond])
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        deny.insert(libc::SYS_clone, clone_rules);
        for (nr, rules) in mode_rules().map_err(err)? {
            deny.insert(nr, rules);
        }
        deny.insert(libc::SYS_socket, vsock_rules().map_err(err)?);
        let deny_filter = SeccompFilter::new(
            deny,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            arch,
        )
        .map_err(err)?;

        let mut no_clone3: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        no_clone3.insert(libc::SYS_clone3, Vec::new());
        // openat2's mode sits in a struct the filter cannot read; ENOSYS
        // sends callers back to openat, whose mode it can.
        no_clone3.insert(libc::SYS_openat2, Vec::new());
        let clone3_filter = SeccompFilter::new(
            no_clone3,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )
        .map_err(err)?;

        let mut programs = Vec::new();
        for filter in [deny_filter, clone3_filter] {
            let program: BpfProgram = filter
                .try_into()
                .map_err(|e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string()))?;
            programs.push(to_bytes(&program));
        }
        Ok(CompiledFilters { programs })
    }

    /// Each program in a sealed-off memory file, positioned at its start, for
    /// `bwrap --add-seccomp-fd`. The descriptors are close-on-exec; the
    /// spawner clears that flag in the child only.
    pub fn to_memfds(&self) -> Result<Vec<OwnedFd>, SandboxError> {
        self.programs
            .iter()
            .map(|bytes| {
                // SAFETY: memfd_create with a static NUL-terminated name; the
                // returned descriptor is checked before use and owned below.
                let fd = unsafe { libc::memfd_create(c"kiln-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
                if fd < 0 {
                    return Err(SandboxError::io(
                        "memfd_create for the seccomp filter",
                        "memfd",
                        std::io::Error::last_os_error(),
                    ));
                }
                // SAFETY: fd was just returned by memfd_create and nothing else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                let mut file = std::fs::File::from(owned);
                let io = |e| SandboxError::io("writing the seccomp filter", "memfd", e);
                file.write_all(bytes).map_err(io)?;
                file.seek(SeekFrom::Start(0)).map_err(io)?;
                Ok(OwnedFd::from(file))
            })
            .collect()
    }
}

pub(crate) fn raw_fds(fds: &[OwnedFd]) -> Vec<i32> {
    fds.iter().map(|fd| fd.as_raw_fd()).collect()
}

fn to_bytes(program: &BpfProgram) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(program.len() * 8);
    for insn in program {
        bytes.extend_from_slice(&insn.code.to_ne_bytes());
        bytes.push(insn.jt);
        bytes.push(insn.jf);
        bytes.extend_from_slice(&insn.k.to_ne_bytes());
    }
    bytes
}

fn target_arch() -> Result<TargetArch, SandboxError> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else if cfg!(target_arch = "riscv64") {
        Ok(TargetArch::riscv64)
    } else {
        Err(SandboxError::Seccomp(format!(
            "no seccomp support for {}; use --sandbox none or a supported architecture",
            std::env::consts::ARCH
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_to_whole_bpf_instructions() {
        let filters = CompiledFilters::build().unwrap();
        assert_eq!(filters.programs.len(), 2);
        for program in &filters.programs {
            assert!(!program.is_empty());
            assert_eq!(program.len() % 8, 0);
        }
    }
}
