//! What a verified delivery asks for, decided without I/O: queue work for a runner, forget an
//! installation, or ignore it. The webhook handler does only this, the dedup and the insert, so
//! it answers within milliseconds.
//!
//! Queued work is a small serde struct of the fields the runner needs, not the delivery's body
//! (which may be 25 MB).

use serde::{Deserialize, Serialize};

use crate::checks::rerun::Trigger;
use crate::github::InstallationId;
use crate::types::RepoName;

use super::commands::parse_comment;
use super::webhook::{
    CheckRunAction, CheckSuiteAction, CommentAction, InstallationAction, PullRequestAction,
    WebhookEvent,
};

/// One unit of work in the request queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Work {
    /// Opened, reopened or pushed to: run the configured workflows at the head commit.
    PullRequest(PullRequestWork),
    /// Closed (merged or not): cancel its jobs and clean their worktrees.
    PullRequestClosed { repo: RepoName, number: u64 },
    /// A PR comment with at least one command line.
    Comment(CommentWork),
    /// A re-run or button press on a check run, or a check suite's re-run.
    CheckRerun(CheckRerunWork),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequestWork {
    pub repo: RepoName,
    pub number: u64,
    pub head_sha: String,
    pub is_fork: bool,
    pub installation: u64,
    /// `opened`, `reopened` or `synchronize`.
    pub action: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommentWork {
    pub repo: RepoName,
    pub number: u64,
    pub comment_id: u64,
    pub author: String,
    pub body: String,
    pub installation: u64,
}

impl Work {
    /// The work as the queue stores it: JSON, with every NUL in a text replaced by U+FFFD.
    /// PostgreSQL's `jsonb` cannot hold `\u0000`, so a comment carrying one failed its whole
    /// ingest batch (503 for it and the deliveries beside it, on every redelivery); nothing
    /// prodigy reads from a payload means anything by a NUL.
    pub fn payload(&self) -> serde_json::Result<Box<serde_json::value::RawValue>> {
        fn clean(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::String(s) if s.contains('\0') => {
                    *s = s.replace('\0', "\u{FFFD}");
                }
                serde_json::Value::Array(items) => items.iter_mut().for_each(clean),
                serde_json::Value::Object(fields) => fields.values_mut().for_each(clean),
                _ => {}
            }
        }
        let mut value = serde_json::to_value(self)?;
        clean(&mut value);
        serde_json::value::to_raw_value(&value)
    }

    /// The request kind in the queue (for operators reading the table).
    pub fn kind(&self) -> &'static str {
        match self {
            Work::PullRequest(_) => "pull_request",
            Work::PullRequestClosed { .. } => "pull_request_closed",
            Work::Comment(_) => "comment",
            Work::CheckRerun(_) => "check_rerun",
        }
    }
}

/// What to do with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Queue(Work),
    /// `installation.deleted`: drop its cached token.
    Forget(InstallationId),
    /// Answered 2xx, nothing else; the reason goes to the log.
    Ignore(String),
}

/// What the routing needs to know about the server.
pub struct RouteRules<'a> {
    pub allow_repos: &'a [RepoName],
    pub app_slug: Option<&'a str>,
}

pub fn route(event: &WebhookEvent, rules: &RouteRules<'_>) -> Route {
    let ignore = |why: &str| Route::Ignore(why.to_string());
    if let Some(repo) = event.repo()
        && !rules.allow_repos.contains(repo)
    {
        return Route::Ignore(format!("repository {repo} is not on the allow-list"));
    }
    match event {
        WebhookEvent::PullRequest(pr) => {
            let Some(installation) = pr.installation_id else {
                return ignore("pull_request without an installation: not sent to an App");
            };
            let action = match &pr.action {
                PullRequestAction::Opened => "opened",
                PullRequestAction::Reopened => "reopened",
                PullRequestAction::Synchronize => "synchronize",
                PullRequestAction::Closed => {
                    return Route::Queue(Work::PullRequestClosed {
                        repo: pr.repo.clone(),
                        number: pr.number.0,
                    });
                }
                PullRequestAction::Other(a) => return ignore(&format!("pull_request.{a}")),
            };
            // A fork's new push needs no answer; opening one gets the one notice that it does
            // not run by itself.
            if pr.is_fork && action == "synchronize" {
                return ignore("push to a fork's pull request: forks are not run automatically");
            }
            Route::Queue(Work::PullRequest(PullRequestWork {
                repo: pr.repo.clone(),
                number: pr.number.0,
                head_sha: pr.head_sha.0.clone(),
                is_fork: pr.is_fork,
                installation: installation.0,
                action: action.to_string(),
            }))
        }
        WebhookEvent::IssueComment(c) => {
            if c.action != CommentAction::Created {
                return ignore("edited or deleted comment");
            }
            if !c.is_pull_request {
                return ignore("comment on an issue, not a pull request");
            }
            if c.author_is_bot {
                return ignore("comment by a bot");
            }
            let Some(installation) = c.installation_id else {
                return ignore("issue_comment without an installation: not sent to an App");
            };
            if parse_comment(&c.body, rules.app_slug).is_empty() {
                return ignore("comment without a command");
            }
            Route::Queue(Work::Comment(CommentWork {
                repo: c.repo.clone(),
                number: c.issue_number.0,
                comment_id: c.comment_id.0,
                author: c.author_login.clone(),
                body: c.body.clone(),
                installation: installation.0,
            }))
        }
        WebhookEvent::Installation(i) if i.action == InstallationAction::Deleted => {
            Route::Forget(i.installation_id)
        }
        WebhookEvent::Installation(_) => ignore("installation event other than deleted"),
        WebhookEvent::CheckRun(_) | WebhookEvent::CheckSuite(_) => route_check_event(event),
        WebhookEvent::Ping => ignore("ping"),
        WebhookEvent::Ignored { event, action } => Route::Ignore(match action {
            Some(a) => format!("{event}.{a} is not acted on"),
            None => format!("{event} is not acted on"),
        }),
    }
}

/// A re-run or button press, queued for the runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRerunWork {
    pub repo: RepoName,
    pub installation: u64,
    pub trigger: RerunTrigger,
    /// The check run's `external_id` (prodigy's job id); `None` for a check suite, whose jobs
    /// are found by `head_sha`.
    pub job: Option<String>,
    pub head_sha: String,
    pub sender: String,
}

/// [`Trigger`] as queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "identifier", rename_all = "snake_case")]
pub enum RerunTrigger {
    CheckRunRerequested,
    CheckSuiteRerequested,
    Button(String),
}

impl RerunTrigger {
    pub fn to_trigger(&self) -> Trigger {
        match self {
            RerunTrigger::CheckRunRerequested => Trigger::CheckRunRerequested,
            RerunTrigger::CheckSuiteRerequested => Trigger::CheckSuiteRerequested,
            RerunTrigger::Button(id) => Trigger::Button(id.clone()),
        }
    }
}

impl CheckRerunWork {
    /// The delivery's event and action, for the deliveries table.
    pub fn event_and_action(&self) -> (&'static str, Option<&'static str>) {
        match self.trigger {
            RerunTrigger::CheckRunRerequested => ("check_run", Some("rerequested")),
            RerunTrigger::Button(_) => ("check_run", Some("requested_action")),
            RerunTrigger::CheckSuiteRerequested => ("check_suite", Some("rerequested")),
        }
    }
}

/// Routes a `check_run` or `check_suite` delivery (the allow-list was checked by the caller).
pub fn route_check_event(event: &WebhookEvent) -> Route {
    let ignore = |why: &str| Route::Ignore(why.to_string());
    let work = match event {
        WebhookEvent::CheckRun(e) => {
            let trigger = match (&e.action, &e.requested_action_identifier) {
                (CheckRunAction::Rerequested, _) => RerunTrigger::CheckRunRerequested,
                (CheckRunAction::RequestedAction, Some(id)) => RerunTrigger::Button(id.clone()),
                (CheckRunAction::RequestedAction, None) => {
                    return ignore("check_run.requested_action without an identifier");
                }
                (other, _) => return ignore(&format!("check_run action {other:?}")),
            };
            // GitHub sends re-runs only to the App that made the run; one without a job id is
            // not prodigy's, and there is no job to name in an answer.
            let Some(job) = &e.external_id else {
                return ignore("check run without an external_id: not a prodigy job");
            };
            let Some(installation) = e.installation_id else {
                return ignore("check_run without an installation: not sent to an App");
            };
            CheckRerunWork {
                repo: e.repo.clone(),
                installation: installation.0,
                trigger,
                job: Some(job.clone()),
                head_sha: e.head_sha.0.clone(),
                sender: e.sender_login.clone(),
            }
        }
        WebhookEvent::CheckSuite(e) => {
            if e.action != CheckSuiteAction::Rerequested {
                return ignore(&format!("check_suite action {:?}", e.action));
            }
            let Some(installation) = e.installation_id else {
                return ignore("check_suite without an installation: not sent to an App");
            };
            CheckRerunWork {
                repo: e.repo.clone(),
                installation: installation.0,
                trigger: RerunTrigger::CheckSuiteRerequested,
                job: None,
                head_sha: e.head_sha.0.clone(),
                sender: e.sender_login.clone(),
            }
        }
        _ => return ignore("not a check event"),
    };
    Route::Queue(Work::CheckRerun(work))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::github::{CheckRunId, CommentId, CommitSha, PrNumber};
    use crate::server::webhook::{
        CheckRunEvent, CheckSuiteEvent, IssueCommentEvent, PullRequestEvent,
    };

    /// Found by tests/fuzz (webhook, PostgreSQL): a PR comment `/prodigy help \0` was answered
    /// 503 on every delivery, because `jsonb` refuses `\u0000`.
    #[test]
    fn queued_payloads_hold_no_nul() {
        let work = Work::Comment(CommentWork {
            repo: RepoName::new("octo/repo"),
            number: 1,
            comment_id: 2,
            author: "dev\0".into(),
            body: "/prodigy help \0".into(),
            installation: 3,
        });
        let text = work.payload().unwrap().get().to_string();
        assert!(!text.contains("\\u0000"), "{text}");
        let back: Work = serde_json::from_str(&text).unwrap();
        let Work::Comment(c) = back else {
            panic!("{text}")
        };
        assert_eq!(c.body, "/prodigy help \u{FFFD}");
        assert_eq!(c.author, "dev\u{FFFD}");
    }

    fn allow() -> Vec<RepoName> {
        vec![RepoName::new("octo/repo")]
    }

    fn pr(action: PullRequestAction, fork: bool) -> WebhookEvent {
        WebhookEvent::PullRequest(PullRequestEvent {
            action,
            repo: RepoName::new("Octo/Repo"),
            number: PrNumber(7),
            head_sha: CommitSha("a".repeat(40)),
            head_ref: "topic".into(),
            base_ref: "main".into(),
            is_fork: fork,
            installation_id: Some(InstallationId(1)),
            sender_login: "dev".into(),
            sender_is_bot: false,
        })
    }

    fn comment(body: &str, action: CommentAction, bot: bool, on_pr: bool) -> WebhookEvent {
        WebhookEvent::IssueComment(IssueCommentEvent {
            action,
            repo: RepoName::new("octo/repo"),
            issue_number: PrNumber(7),
            is_pull_request: on_pr,
            comment_id: CommentId(5),
            body: body.into(),
            author_login: "dev".into(),
            author_is_bot: bot,
            installation_id: Some(InstallationId(1)),
        })
    }

    fn rules(allow: &[RepoName]) -> RouteRules<'_> {
        RouteRules {
            allow_repos: allow,
            app_slug: Some("prodigy-bot"),
        }
    }

    #[test]
    fn pull_requests_queue_by_action() {
        let a = allow();
        assert!(matches!(
            route(&pr(PullRequestAction::Opened, false), &rules(&a)),
            Route::Queue(Work::PullRequest(w)) if w.action == "opened" && !w.is_fork
        ));
        assert!(matches!(
            route(&pr(PullRequestAction::Closed, false), &rules(&a)),
            Route::Queue(Work::PullRequestClosed { number: 7, .. })
        ));
        assert!(matches!(
            route(
                &pr(PullRequestAction::Other("labeled".into()), false),
                &rules(&a)
            ),
            Route::Ignore(_)
        ));
        assert!(matches!(
            route(&pr(PullRequestAction::Opened, true), &rules(&a)),
            Route::Queue(Work::PullRequest(w)) if w.is_fork
        ));
        assert!(matches!(
            route(&pr(PullRequestAction::Synchronize, true), &rules(&a)),
            Route::Ignore(_)
        ));
        // Empty allow-list: nothing.
        assert!(matches!(
            route(&pr(PullRequestAction::Opened, false), &rules(&[])),
            Route::Ignore(r) if r.contains("allow-list")
        ));
    }

    #[test]
    fn comments_queue_only_when_created_by_a_person_on_a_pr_with_a_command() {
        let a = allow();
        let r = |e: WebhookEvent| route(&e, &rules(&a));
        assert!(matches!(
            r(comment(
                "/prodigy status",
                CommentAction::Created,
                false,
                true
            )),
            Route::Queue(Work::Comment(_))
        ));
        assert!(matches!(
            r(comment(
                "@prodigy-bot help",
                CommentAction::Created,
                false,
                true
            )),
            Route::Queue(Work::Comment(_))
        ));
        for ignored in [
            comment("/prodigy status", CommentAction::Edited, false, true),
            comment("/prodigy status", CommentAction::Deleted, false, true),
            comment("/prodigy status", CommentAction::Created, true, true),
            comment("/prodigy status", CommentAction::Created, false, false),
            comment("looks good", CommentAction::Created, false, true),
            comment("> /prodigy run", CommentAction::Created, false, true),
        ] {
            assert!(
                matches!(r(ignored.clone()), Route::Ignore(_)),
                "{ignored:?}"
            );
        }
    }

    #[test]
    fn work_round_trips_through_json() {
        let w = Work::PullRequestClosed {
            repo: RepoName::new("octo/repo"),
            number: 3,
        };
        let v = serde_json::to_value(&w).unwrap();
        assert_eq!(v["type"], "pull_request_closed");
        assert_eq!(serde_json::from_value::<Work>(v).unwrap(), w);
    }

    fn run(action: CheckRunAction, button: Option<&str>, external: Option<&str>) -> WebhookEvent {
        WebhookEvent::CheckRun(CheckRunEvent {
            action,
            external_id: external.map(str::to_string),
            check_run_id: CheckRunId(9),
            requested_action_identifier: button.map(str::to_string),
            head_sha: CommitSha("b".repeat(40)),
            repo: RepoName::new("octo/repo"),
            installation_id: Some(InstallationId(3)),
            sender_login: "dev".into(),
        })
    }

    #[test]
    fn reruns_and_buttons_are_queued_other_check_events_ignored() {
        let job = "0192f5a0-0000-7000-8000-000000000001";
        let Route::Queue(Work::CheckRerun(w)) =
            route_check_event(&run(CheckRunAction::Rerequested, None, Some(job)))
        else {
            panic!("rerequested is queued")
        };
        assert_eq!(w.trigger, RerunTrigger::CheckRunRerequested);
        assert_eq!(w.job.as_deref(), Some(job));
        assert_eq!(w.installation, 3);
        assert_eq!(w.event_and_action(), ("check_run", Some("rerequested")));
        let Route::Queue(Work::CheckRerun(w)) = route_check_event(&run(
            CheckRunAction::RequestedAction,
            Some("retry_failed"),
            Some(job),
        )) else {
            panic!("a button is queued")
        };
        assert_eq!(
            w.trigger.to_trigger(),
            Trigger::Button("retry_failed".into())
        );
        for ignored in [
            run(CheckRunAction::Created, None, Some(job)),
            run(CheckRunAction::Completed, None, Some(job)),
            run(CheckRunAction::RequestedAction, None, Some(job)),
            run(CheckRunAction::Rerequested, None, None),
        ] {
            assert!(
                matches!(route_check_event(&ignored), Route::Ignore(_)),
                "{ignored:?}"
            );
        }
        let suite = |action| {
            WebhookEvent::CheckSuite(CheckSuiteEvent {
                action,
                head_sha: CommitSha("c".repeat(40)),
                repo: RepoName::new("octo/repo"),
                installation_id: Some(InstallationId(3)),
                sender_login: "dev".into(),
            })
        };
        assert!(matches!(
            route_check_event(&suite(CheckSuiteAction::Rerequested)),
            Route::Queue(Work::CheckRerun(CheckRerunWork { job: None, .. }))
        ));
        assert!(matches!(
            route_check_event(&suite(CheckSuiteAction::Requested)),
            Route::Ignore(_)
        ));
    }

    #[test]
    fn queued_work_round_trips() {
        let w = Work::CheckRerun(CheckRerunWork {
            repo: RepoName::new("octo/repo"),
            installation: 1,
            trigger: RerunTrigger::Button("resume".into()),
            job: Some("j".into()),
            head_sha: "a".repeat(40),
            sender: "dev".into(),
        });
        let v = serde_json::to_value(&w).unwrap();
        assert_eq!(v["type"], "check_rerun");
        assert_eq!(serde_json::from_value::<Work>(v).unwrap(), w);
    }
}
