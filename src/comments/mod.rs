//! `/prodigy` commands in pull-request comments, shared by both faces that answer them: the
//! App server (`prodigy serve`) and the GitHub Action (`prodigy action` on `issue_comment`).
//!
//! - [`commands`]: the command language and its parser (code blocks and quotes ignored, "did you
//!   mean" for typos);
//! - [`replies`]: every text posted about commands;
//! - this module: who may run what ([`allowed`]), and the `author_association` fallback for a
//!   token that cannot read collaborator permissions ([`permission_from_association`]).

pub mod commands;
pub mod replies;

use crate::github::Permission;
use commands::PrCommand;

/// Whether a user with permission `p` may run `command`: `help` and `status` are for everyone,
/// `resume budget=` needs maintain or admin, everything else write, maintain or admin.
pub fn allowed(command: &PrCommand, p: Permission) -> bool {
    if command.needs_maintain_permission() {
        p.can_maintain()
    } else if command.needs_write_permission() {
        p.can_write()
    } else {
        true
    }
}

/// A commenter's permission read from the comment's `author_association`, for when the token
/// cannot ask GitHub for it: `OWNER` counts as admin, `MEMBER` and `COLLABORATOR` as write (an
/// organisation member or a collaborator of the repository), everyone else as read. Coarser than
/// the API (a read-only collaborator counts as write), so it is only the fallback.
pub fn permission_from_association(association: &str) -> Permission {
    match association.to_ascii_uppercase().as_str() {
        "OWNER" => Permission::Admin,
        "MEMBER" | "COLLABORATOR" => Permission::Write,
        _ => Permission::Read,
    }
}

/// Whether a command that runs a pull request's code may run it for a pull request from a fork:
/// only when a maintainer (maintain or admin) asks, since the fork's code then runs with this
/// repository's token and secrets.
pub fn may_run_fork(p: Permission) -> bool {
    p.can_maintain()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_may_run_what() {
        let run = PrCommand::Run { workflow: None };
        let budget = commands::parse_comment("/prodigy resume budget=5", None)[0]
            .result
            .clone()
            .unwrap();
        assert!(allowed(&PrCommand::Status, Permission::None));
        assert!(allowed(&PrCommand::Help, Permission::Read));
        assert!(!allowed(&run, Permission::Triage));
        assert!(allowed(&run, Permission::Write));
        assert!(!allowed(&budget, Permission::Write));
        assert!(allowed(&budget, Permission::Maintain));
        assert!(!may_run_fork(Permission::Write));
        assert!(may_run_fork(Permission::Admin));
    }

    #[test]
    fn the_association_fallback() {
        assert_eq!(permission_from_association("OWNER"), Permission::Admin);
        assert_eq!(permission_from_association("member"), Permission::Write);
        assert_eq!(
            permission_from_association("COLLABORATOR"),
            Permission::Write
        );
        for other in [
            "CONTRIBUTOR",
            "FIRST_TIME_CONTRIBUTOR",
            "NONE",
            "MANNEQUIN",
            "",
        ] {
            assert_eq!(
                permission_from_association(other),
                Permission::Read,
                "{other}"
            );
        }
    }
}
