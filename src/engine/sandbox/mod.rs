//! The agent sandbox: what an agent command may read and write, applied at spawn.
//!
//! On Linux every agent command (the `shell:` and `claude:` steps of setup, map agents, reduce
//! and merge) starts inside a Landlock domain built from a [`Plan`]:
//!
//! - read and write: its own worktree, its private temporary directory (`TMPDIR`), the AI CLI's
//!   own directories (`~/.claude`, `~/.claude.json`), and of the repository's git directory
//!   only what a commit writes (`objects`, `refs`, `logs` and the worktree's own
//!   `worktrees/<name>`);
//! - read only: the system (`/usr`, `/bin`, `/lib*`, `/etc`, `/opt`, `/proc`, `/sys`, `/dev`),
//!   toolchains under `$HOME` (`.cargo`, `.rustup`, `.local`, `.nvm`, `.npm`, git's config),
//!   the AI CLI's package directory and the rest of the git directory;
//! - never: prodigy's state directory (database, logs, other worktrees), key files, other
//!   agents' `worktrees/<name>` entries. A granted directory that contains one of these is
//!   granted child by child instead, leaving that one out (Landlock grants whole subtrees).
//!
//! Landlock's scoping (ABI 6 and later) also keeps the agent from signalling processes or
//! connecting to abstract unix sockets outside its domain, and a sandboxed process can never
//! ptrace, or read `/proc/<pid>/environ` or `/proc/<pid>/mem` of, a process outside it. The
//! command also gets `no_new_privs` (sudo and setuid binaries cannot climb back), and when
//! prodigy runs with capabilities (as root), the ones that reach other processes, raw devices
//! or the kernel are dropped from every set before exec ([`DROPPED_CAPS`]).
//!
//! Network access is not restricted: egress policy is the operator's (README, "Security model").
//!
//! The git directories the plan is built around are found (and `packed-refs` moved where agents
//! can lock it) in `git_dirs`.

use std::path::{Path, PathBuf};
use std::str::FromStr;

mod git_dirs;

pub use git_dirs::{PACKED_REFS_DIR, git_dirs, packed_refs_apart};

/// Set to `1` to make prodigy behave as if the kernel had no Landlock: the switch the tests and
/// operators use to check what `auto` and `required` do on such a machine.
pub const SIMULATE_MISSING_ENV: &str = "PRODIGY_SANDBOX_SIMULATE_MISSING";

/// The operator's choice: `auto` sandboxes where the kernel can, `required` fails a job that
/// cannot be sandboxed, `off` runs agents unconfined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxMode {
    #[default]
    Auto,
    Required,
    Off,
}

impl FromStr for SandboxMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(SandboxMode::Auto),
            "required" => Ok(SandboxMode::Required),
            "off" => Ok(SandboxMode::Off),
            other => Err(format!(
                "unknown sandbox mode `{other}`: use `auto`, `required` or `off`"
            )),
        }
    }
}

/// What the operator configured.
#[derive(Debug, Clone, Default)]
pub struct SandboxSettings {
    pub mode: SandboxMode,
    /// Extra paths agents may read (e.g. a toolchain outside the usual places).
    pub extra_read: Vec<PathBuf>,
    /// Extra paths agents may write (e.g. a shared build cache such as `~/.cache/sccache`).
    pub extra_write: Vec<PathBuf>,
    /// Paths no agent may reach even when a granted directory holds them: the key files, the
    /// database file. prodigy's state directory is always added.
    pub deny: Vec<PathBuf>,
}

/// Whether this process can sandbox agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    /// Landlock works; the kernel's ABI version.
    Available { abi: i32 },
    /// No sandbox here, and why.
    Missing(String),
}

/// Whether agents will run sandboxed under `settings`, checked once per job: the sandbox is
/// used, or the job runs unconfined with this warning, or (`required`) must fail with this
/// reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Enforced { abi: i32 },
    Unconfined { warning: String },
    Refused { reason: String },
}

pub fn verdict(mode: SandboxMode) -> Verdict {
    match (mode, support()) {
        (SandboxMode::Off, _) => Verdict::Unconfined {
            warning: "the agent sandbox is off (--sandbox off / PRODIGY_SANDBOX=off): agents can read and write everything this user can, including prodigy's state".into(),
        },
        (_, Support::Available { abi }) => Verdict::Enforced { abi },
        (SandboxMode::Auto, Support::Missing(why)) => Verdict::Unconfined {
            warning: format!(
                "agents run without a sandbox: {why}. Set --sandbox required (PRODIGY_SANDBOX=required) to refuse such runs"
            ),
        },
        (SandboxMode::Required, Support::Missing(why)) => Verdict::Refused {
            reason: format!(
                "the agent sandbox is required (--sandbox required / PRODIGY_SANDBOX=required), but {why}; run on Linux 5.13 or later with Landlock enabled, or set --sandbox auto"
            ),
        },
    }
}

/// The Landlock support of this kernel (cached), or the simulated absence.
pub fn support() -> Support {
    if std::env::var(SIMULATE_MISSING_ENV).is_ok_and(|v| v == "1") {
        return Support::Missing(format!(
            "Landlock is treated as missing because {SIMULATE_MISSING_ENV}=1"
        ));
    }
    static SUPPORT: std::sync::OnceLock<Support> = std::sync::OnceLock::new();
    SUPPORT.get_or_init(imp::probe).clone()
}

/// The paths one agent command may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub read: Vec<PathBuf>,
    pub write: Vec<PathBuf>,
    /// Directories whose regular files may be created, written and removed, and nothing else
    /// made there (no symlinks, directories or devices, no moves in from elsewhere):
    /// [`PACKED_REFS_DIR`].
    pub write_files: Vec<PathBuf>,
}

/// System directories agents read (those that exist).
const SYSTEM_READ: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/opt",
    "/proc",
    "/sys",
    "/dev",
    "/nix/store",
];

/// Device files agents write (output to /dev/null and the like); nothing else of /dev.
const DEV_WRITE: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts",
    "/dev/shm",
];

/// Toolchains and tool configuration under `$HOME`, read only.
const HOME_READ: &[&str] = &[
    ".cargo",
    ".rustup",
    ".local",
    ".nvm",
    ".npm",
    ".volta",
    ".bun",
    ".pyenv",
    ".gitconfig",
    ".config/git",
];

/// The AI CLI's own state under `$HOME`, read and write.
const HOME_WRITE: &[&str] = &[".claude", ".claude.json", ".cache/claude", ".config/claude"];

/// What [`Plan::for_agent`] needs to know.
pub struct AgentPaths<'a> {
    /// The agent's worktree (a linked git worktree).
    pub worktree: &'a Path,
    /// Its private temporary directory.
    pub tmp: &'a Path,
    /// `$HOME` as the agent sees it.
    pub home: Option<&'a Path>,
    /// The AI CLI as configured (a name looked up on `path`, or a path).
    pub claude_bin: &'a str,
    /// `$PATH` as the agent sees it.
    pub path: Option<&'a str>,
    /// prodigy's state directory.
    pub state_dir: &'a Path,
}

impl Plan {
    /// The rules for one agent command. Paths that do not exist are left out; every path is
    /// canonical, so a symlink cannot smuggle a denied directory in.
    pub fn for_agent(settings: &SandboxSettings, p: &AgentPaths<'_>) -> std::io::Result<Plan> {
        let mut deny: Vec<PathBuf> = settings
            .deny
            .iter()
            .chain(std::iter::once(&p.state_dir.to_path_buf()))
            .filter_map(|d| d.canonicalize().ok())
            .collect();
        let worktree = p.worktree.canonicalize()?;
        // The agent's own places lie inside the state directory (the worktree, and on the server
        // the repository cache): they are granted by their own rules, and only what is denied
        // *inside* them is left out.
        let mut own_write = vec![worktree, p.tmp.canonicalize()?];
        let mut own_read = Vec::new();
        let mut write_files = Vec::new();
        if let Some((common, admin)) = git_dirs(&own_write[0]) {
            if let Some(dir) = packed_refs_apart(&common) {
                write_files.push(dir);
            }
            // A commit writes objects, refs and reflogs; the rest (config, hooks) stays
            // read-only, or an agent could make prodigy's own git commands run its code.
            // Other worktrees' administrative entries are not the agent's business at all.
            for sub in ["objects", "refs", "logs"] {
                let dir = common.join(sub);
                let _ = std::fs::create_dir_all(&dir);
                own_write.push(dir);
            }
            own_write.push(admin);
            deny.push(common.join("worktrees"));
            own_read.push(common);
        }

        let mut read: Vec<PathBuf> = SYSTEM_READ.iter().map(PathBuf::from).collect();
        let mut write = Vec::new();
        if let Some(home) = p.home {
            read.extend(HOME_READ.iter().map(|r| home.join(r)));
            write.extend(HOME_WRITE.iter().map(|r| home.join(r)));
        }
        if let Some(dir) = resolve_program(p.claude_bin, p.path)
            .and_then(|bin| bin.canonicalize().ok())
            .and_then(|bin| bin.parent().map(Path::to_path_buf))
        {
            read.push(dir);
        }
        read.extend(settings.extra_read.iter().cloned());
        write.extend(settings.extra_write.iter().cloned());

        let grant = |paths: Vec<PathBuf>, own: bool| -> Vec<PathBuf> {
            let mut out = Vec::new();
            for path in paths.into_iter().filter_map(|p| p.canonicalize().ok()) {
                if own {
                    let inside: Vec<PathBuf> = deny
                        .iter()
                        .filter(|d| d.starts_with(&path) && **d != path)
                        .cloned()
                        .collect();
                    out.extend(grant_except(&path, &inside));
                } else {
                    out.extend(grant_except(&path, &deny));
                }
            }
            out
        };
        let mut write_all = grant(own_write, true);
        write_all.extend(grant(write, false));
        write_all.extend(
            DEV_WRITE
                .iter()
                .map(PathBuf::from)
                .filter_map(|p| p.canonicalize().ok()),
        );
        write_all.sort();
        write_all.dedup();
        let mut read_all = grant(own_read, true);
        read_all.extend(grant(read, false));
        read_all.retain(|r| !write_all.iter().any(|w| r.starts_with(w)));
        read_all.sort();
        read_all.dedup();
        Ok(Plan {
            read: read_all,
            write: write_all,
            write_files,
        })
    }

    /// Opens the rules in prodigy (before fork), ready for [`Prepared::enter`] in the child.
    pub fn prepare(&self) -> std::io::Result<Prepared> {
        imp::prepare(self)
    }
}

/// `path` itself when no denied path lies inside it (and it is not denied); otherwise its
/// children, recursively, leaving the denied ones out.
pub fn grant_except(path: &Path, deny: &[PathBuf]) -> Vec<PathBuf> {
    if deny.iter().any(|d| path.starts_with(d)) {
        return Vec::new();
    }
    if !deny.iter().any(|d| d.starts_with(path)) {
        return vec![path.to_path_buf()];
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return Vec::new();
    };
    // Symlinks need no rule: Landlock judges the path they resolve to.
    let mut children: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_symlink()))
        .map(|e| e.path())
        .collect();
    children.sort();
    children
        .iter()
        .flat_map(|child| grant_except(child, deny))
        .collect()
}

/// `program` as `exec` would find it on `path`.
pub fn resolve_program(program: &str, path: Option<&str>) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    path?
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// Capabilities taken from an agent when prodigy has them (as root): they reach other
/// processes (ptrace, perf, bpf, checkpoint/restore), the kernel (modules, admin, reboot,
/// syslog), raw devices (rawio, mknod), or let a process open files by handle around
/// path-based rules (dac_read_search).
#[cfg(target_os = "linux")]
pub const DROPPED_CAPS: &[caps::Capability] = &[
    caps::Capability::CAP_SYS_PTRACE,
    caps::Capability::CAP_SYS_ADMIN,
    caps::Capability::CAP_PERFMON,
    caps::Capability::CAP_BPF,
    caps::Capability::CAP_CHECKPOINT_RESTORE,
    caps::Capability::CAP_SYS_RAWIO,
    caps::Capability::CAP_SYS_MODULE,
    caps::Capability::CAP_SYS_BOOT,
    caps::Capability::CAP_SYSLOG,
    caps::Capability::CAP_MKNOD,
    caps::Capability::CAP_DAC_READ_SEARCH,
    caps::Capability::CAP_MAC_ADMIN,
    caps::Capability::CAP_MAC_OVERRIDE,
];

pub use imp::Prepared;

/// Marks this process non-dumpable (Linux): its `/proc/<pid>/environ`, `/proc/<pid>/mem` and
/// ptrace are then closed to other processes of the same user, agents included. The server
/// and the Action call it once their secrets are read.
pub fn make_undumpable() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl(PR_SET_DUMPABLE) takes plain integers.
        if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(target_os = "linux")]
mod imp {
    use std::io;

    use caps::{CapSet, CapsHashSet};
    use landlock::{
        ABI, Access, AccessFs, LandlockStatus, PathBeneath, PathFd, Ruleset, RulesetAttr,
        RulesetCreated, RulesetCreatedAttr, Scope,
    };

    use super::{DROPPED_CAPS, Plan, Support};

    /// The newest Landlock ABI these rules were checked against; older kernels get what they
    /// support (best effort), newer ones are not asked for rights nobody has tested here.
    const ABI_TARGET: ABI = ABI::V7;

    /// Rules and capability sets computed before fork; [`Prepared::enter`] applies them in the
    /// child with async-signal-safe system calls only.
    pub struct Prepared {
        ruleset: Option<RulesetCreated>,
        caps: Option<CapsPlan>,
    }

    struct CapsPlan {
        bounding_drop: bool,
        effective: CapsHashSet,
        permitted: CapsHashSet,
        inheritable: CapsHashSet,
    }

    pub(super) fn probe() -> Support {
        // Restricting is the crate's way to report the kernel's status; a throwaway thread
        // takes the (empty) restriction with it when it ends.
        let probe = std::thread::spawn(|| {
            Ruleset::default()
                .handle_access(AccessFs::Execute)
                .and_then(|r| r.create())
                .and_then(|r| r.restrict_self())
                .map(|status| status.landlock)
        });
        match probe.join() {
            Ok(Ok(LandlockStatus::Available {
                effective_abi,
                kernel_abi,
            })) => Support::Available {
                abi: kernel_abi.unwrap_or(effective_abi as i32),
            },
            Ok(Ok(LandlockStatus::NotEnabled)) => Support::Missing(
                "this kernel has Landlock but it is not enabled (add `landlock` to the `lsm=` boot parameter)".into(),
            ),
            Ok(Ok(_)) => Support::Missing(
                "this kernel has no Landlock (it needs Linux 5.13 or later built with CONFIG_SECURITY_LANDLOCK)".into(),
            ),
            Ok(Err(e)) => Support::Missing(format!("Landlock does not work here: {e}")),
            Err(_) => Support::Missing("the Landlock probe failed".into()),
        }
    }

    fn ll(e: impl std::fmt::Display) -> io::Error {
        io::Error::other(format!("cannot build the agent sandbox: {e}"))
    }

    pub(super) fn prepare(plan: &Plan) -> io::Result<Prepared> {
        let abi = ABI_TARGET;
        let mut ruleset = Ruleset::default()
            .handle_access(AccessFs::from_all(abi))
            .and_then(|r| r.scope(Scope::from_all(abi)))
            .and_then(|r| r.create())
            .map_err(ll)?;
        // Regular files only: no symlink that prodigy's git would write through, no directory,
        // device or fifo, no file moved or linked in from elsewhere (no `Refer`).
        let files_only = AccessFs::from_read(abi) & (AccessFs::ReadFile | AccessFs::ReadDir)
            | AccessFs::from_all(abi)
                & (AccessFs::WriteFile
                    | AccessFs::Truncate
                    | AccessFs::MakeReg
                    | AccessFs::RemoveFile);
        for (paths, access) in [
            (&plan.read, AccessFs::from_read(abi)),
            (&plan.write, AccessFs::from_all(abi)),
            (&plan.write_files, files_only),
        ] {
            for path in paths {
                let Ok(fd) = PathFd::new(path) else {
                    continue; // gone since the plan was made
                };
                let access = if path.is_dir() {
                    access
                } else {
                    access & AccessFs::from_file(abi)
                };
                ruleset = ruleset
                    .add_rule(PathBeneath::new(fd, access))
                    .map_err(|e| ll(format!("{}: {e}", path.display())))?;
            }
        }
        Ok(Prepared {
            ruleset: Some(ruleset),
            caps: caps_plan()?,
        })
    }

    /// The capability sets the agent keeps; `None` when prodigy has none to give away.
    fn caps_plan() -> io::Result<Option<CapsPlan>> {
        let read = |set| caps::read(None, set).map_err(|e| io::Error::other(e.to_string()));
        let permitted = read(CapSet::Permitted)?;
        let bounding_drop =
            caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SETPCAP).unwrap_or(false);
        if permitted.is_empty() && !bounding_drop {
            return Ok(None);
        }
        let keep = |mut set: CapsHashSet| {
            for cap in DROPPED_CAPS {
                set.remove(cap);
            }
            set
        };
        Ok(Some(CapsPlan {
            bounding_drop,
            effective: keep(read(CapSet::Effective)?),
            permitted: keep(permitted),
            inheritable: keep(read(CapSet::Inheritable)?),
        }))
    }

    impl Prepared {
        /// In the child, between fork and exec: drop capabilities, then enter the Landlock
        /// domain (which sets `no_new_privs` first).
        pub fn enter(&mut self) -> io::Result<()> {
            let fail = |what: &str| io::Error::other(format!("agent sandbox: {what}"));
            if let Some(plan) = &self.caps {
                if plan.bounding_drop {
                    for cap in DROPPED_CAPS {
                        // A kernel older than the capability answers EINVAL: nothing to drop.
                        let _ = caps::drop(None, CapSet::Bounding, *cap);
                    }
                }
                caps::clear(None, CapSet::Ambient).map_err(|_| fail("clear ambient caps"))?;
                caps::set(None, CapSet::Inheritable, &plan.inheritable)
                    .map_err(|_| fail("set inheritable caps"))?;
                caps::set(None, CapSet::Effective, &plan.effective)
                    .map_err(|_| fail("set effective caps"))?;
                caps::set(None, CapSet::Permitted, &plan.permitted)
                    .map_err(|_| fail("set permitted caps"))?;
            }
            if let Some(ruleset) = self.ruleset.take() {
                ruleset
                    .restrict_self()
                    .map_err(|_| fail("landlock_restrict_self failed"))?;
            }
            Ok(())
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;

    use super::{Plan, Support};

    /// Nothing to apply where there is no Landlock.
    pub struct Prepared;

    pub(super) fn probe() -> Support {
        Support::Missing("Landlock is a Linux feature; this platform has no agent sandbox".into())
    }

    pub(super) fn prepare(_plan: &Plan) -> io::Result<Prepared> {
        Ok(Prepared)
    }

    impl Prepared {
        pub fn enter(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_name_the_choices() {
        assert_eq!("Required".parse(), Ok(SandboxMode::Required));
        assert_eq!("off".parse(), Ok(SandboxMode::Off));
        assert!(
            "strict"
                .parse::<SandboxMode>()
                .unwrap_err()
                .contains("`auto`, `required` or `off`")
        );
    }

    #[test]
    fn a_denied_path_splits_its_parents_into_children() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        for d in ["a/state/db", "a/objects", "b"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("a/config"), "").unwrap();
        let deny = vec![root.join("a/state")];
        assert_eq!(
            grant_except(&root, &deny),
            [
                root.join("a/config"),
                root.join("a/objects"),
                root.join("b")
            ]
        );
        assert!(grant_except(&root.join("a/state/db"), &deny).is_empty());
        assert_eq!(grant_except(&root.join("b"), &deny), [root.join("b")]);
    }

    #[test]
    fn symlinks_in_a_split_directory_get_no_rule_of_their_own() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("etc/state")).unwrap();
        std::os::unix::fs::symlink(root.join("etc/state"), root.join("etc/link")).unwrap();
        std::fs::write(root.join("etc/hosts"), "").unwrap();
        let deny = vec![root.join("etc/state")];
        assert_eq!(
            grant_except(&root.join("etc"), &deny),
            [root.join("etc/hosts")]
        );
    }

    #[test]
    fn verdicts_follow_the_mode() {
        assert!(matches!(
            verdict(SandboxMode::Off),
            Verdict::Unconfined { warning } if warning.contains("sandbox is off")
        ));
    }
}
