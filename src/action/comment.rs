//! `issue_comment`: the Action answers `/prodigy` commands on a pull request as the App does
//! (the same parser, permission rule and texts, [`crate::comments`]). It reacts with eyes at
//! once and posts one reply per command; a job command (`run`, `resume`, `retry`) gets one
//! tracking comment that follows the job ([`super::tracking`]). One job per comment: the step
//! runs one job.
//!
//! The workflow runs on the default branch for `issue_comment`, so `run` checks out the pull
//! request's head itself, and for a pull request from a fork only a maintainer may ask for it
//! (the "pwn request" risk: the fork's code would run with this repository's token and secrets).

use std::path::Path;

use anyhow::Context as _;

use super::job::{self, JobRequest};
use super::replies::{self as action_replies, Tracking};
use super::start::{self, Start};
use super::tracking::TrackedComment;
use super::{ActionConfig, BadInput, EnvError, StepContext, StepOutcome, branch, commands, plan};
use crate::comments::commands::{JobRef, ParsedLine, PrCommand, parse_comment};
use crate::comments::replies::{self, CancelReply};
use crate::comments::{allowed, may_run_fork, permission_from_association};
use crate::engine::Engine;
use crate::github::{CommentId, GitHubClient, Permission, PrNumber, Reaction, TOKEN_INSTALLATION};
use crate::server::webhook::{CommentAction, IssueCommentEvent, WebhookEvent, parse_event};
use crate::store::{CancelOutcome, Holder, Job, StoreError};
use crate::types::ItemKey;

/// Why a comment needs no answer, if it does not.
pub fn ignored(c: &IssueCommentEvent) -> Option<&'static str> {
    if c.action != CommentAction::Created {
        Some("an edited or deleted comment is not a new command")
    } else if !c.is_pull_request {
        Some("a comment on an issue, not on a pull request")
    } else if c.author_is_bot {
        Some("a comment by a bot")
    } else {
        None
    }
}

/// The trigger input as an `@mention` name: `@prodigy-bot` and `prodigy-bot` both work.
pub fn mention(trigger: Option<&str>) -> Option<&str> {
    trigger
        .map(|t| t.trim().trim_start_matches('@'))
        .filter(|t| !t.is_empty())
}

struct Ctx<'a> {
    engine: &'a Engine,
    step: &'a StepContext,
    config: &'a ActionConfig,
    repo: &'a Path,
    client: GitHubClient,
    comment: IssueCommentEvent,
    permission: Option<Permission>,
}

pub(crate) async fn answer(
    engine: &Engine,
    step: &StepContext,
    config: &ActionConfig,
    repo: &Path,
) -> anyhow::Result<StepOutcome> {
    let bytes = std::fs::read(&step.env.event_path).map_err(|e| {
        BadInput::Env(EnvError::EventUnreadable {
            path: step.env.event_path.display().to_string(),
            reason: e.to_string(),
        })
    })?;
    let comment = match parse_event("issue_comment", &bytes) {
        Ok(WebhookEvent::IssueComment(c)) => c,
        Ok(_) => unreachable!("an issue_comment payload parses as one"),
        Err(e) => {
            return Err(BadInput::Env(EnvError::EventInvalid {
                path: step.env.event_path.display().to_string(),
                event: step.env.event_name.clone(),
                reason: e.to_string(),
            })
            .into());
        }
    };
    if let Some(why) = ignored(&comment) {
        eprintln!("prodigy: nothing to do: {why}");
        return Ok(StepOutcome::Answered);
    }
    let slug = mention(config.trigger.as_deref());
    let lines = parse_comment(&comment.body, slug);
    if lines.is_empty() {
        eprintln!("prodigy: nothing to do: the comment has no `/prodigy` command");
        return Ok(StepOutcome::Answered);
    }
    let Some(client) = job::client(step, config)? else {
        anyhow::bail!(
            "answering a comment needs a token: pass the action's `token` input (default \
             `${{{{ github.token }}}}`) with `issues: write` and `pull-requests: write`"
        );
    };
    let mut ctx = Ctx {
        engine,
        step,
        config,
        repo,
        client,
        comment,
        permission: None,
    };
    ctx.react().await;
    let mut ran = None;
    for line in &lines {
        let reply = match &line.result {
            Err(e) => Some(replies::command_error(&line.line, e)),
            Ok(command) => {
                let permission = if command.needs_write_permission() {
                    ctx.permission().await?
                } else {
                    Permission::Read
                };
                if !allowed(command, permission) {
                    Some(replies::permission_refused(
                        &ctx.comment.author_login,
                        command,
                    ))
                } else {
                    match command {
                        PrCommand::Help => Some(replies::help(slug)),
                        PrCommand::Status => Some(ctx.status().await?),
                        PrCommand::Cancel { job } => Some(ctx.cancel(job.as_ref()).await?),
                        PrCommand::Run { .. }
                        | PrCommand::Resume { .. }
                        | PrCommand::Retry { .. } => {
                            if ran.is_some() {
                                Some(action_replies::one_job_per_comment(&line.line))
                            } else {
                                ran = ctx.job_command(line, command, permission).await?;
                                None
                            }
                        }
                    }
                }
            }
        };
        if let Some(body) = reply {
            ctx.reply(&body).await?;
        }
    }
    Ok(match ran {
        Some(run) => StepOutcome::Ran(run),
        None => StepOutcome::Answered,
    })
}

impl Ctx<'_> {
    fn pr(&self) -> PrNumber {
        self.comment.issue_number
    }

    async fn react(&self) {
        if let Err(e) = self
            .client
            .create_reaction(
                TOKEN_INSTALLATION,
                &self.step.env.repository,
                self.comment.comment_id,
                Reaction::Eyes,
            )
            .await
        {
            println!(
                "{}",
                commands::warning("prodigy", &format!("cannot add the eyes reaction: {e}"))
            );
        }
    }

    async fn reply(&self, body: &str) -> anyhow::Result<CommentId> {
        self.client
            .create_comment(
                TOKEN_INSTALLATION,
                &self.step.env.repository,
                self.pr(),
                body,
            )
            .await
            .context(
                "cannot reply on the pull request (the token needs `issues: write` and \
                 `pull-requests: write`)",
            )
    }

    /// The commenter's permission: GitHub's answer, or the comment's `author_association` when
    /// the token may not ask.
    async fn permission(&mut self) -> anyhow::Result<Permission> {
        if let Some(p) = self.permission {
            return Ok(p);
        }
        let asked = self
            .client
            .collaborator_permission(
                TOKEN_INSTALLATION,
                &self.step.env.repository,
                &self.comment.author_login,
            )
            .await;
        let p = match asked {
            Ok(p) => p,
            Err(e) if e.is_refusal() => {
                let association = self.comment.author_association.as_deref().unwrap_or("NONE");
                let p = permission_from_association(association);
                println!(
                    "{}",
                    commands::notice(
                        "prodigy: permission from the comment",
                        &format!(
                            "the token cannot read @{}'s permission ({e}); their \
                             author_association {association} counts as {p:?}",
                            self.comment.author_login
                        ),
                    )
                );
                p
            }
            Err(e) => return Err(e).context("cannot check the commenter's permission"),
        };
        self.permission = Some(p);
        Ok(p)
    }

    async fn jobs_of_pr(&self) -> anyhow::Result<Vec<Job>> {
        Ok(self
            .engine
            .store
            .find_jobs_by_pr(&self.step.env.repository, self.pr())
            .await?)
    }

    async fn status(&self) -> anyhow::Result<String> {
        let mut rows = Vec::new();
        for job in self.jobs_of_pr().await? {
            rows.push(replies::StatusRow {
                job: job::job_link(self.step, &job),
                counts: self.engine.store.item_counts(job.id).await?,
                workflow: plan::repo_relative(
                    Path::new(&job.workflow_path),
                    Path::new(&job.repo_path),
                )
                .unwrap_or(job.workflow_path.clone()),
                head_sha: job.head_sha.map(|s| s.0),
                status: job.status,
                phase: job.phase,
            });
        }
        Ok(replies::status(&rows))
    }

    /// The job `wanted` names (of this repository), or this pull request's latest.
    async fn resolve(&self, wanted: Option<&JobRef>) -> anyhow::Result<Result<Job, String>> {
        let Some(wanted) = wanted else {
            let latest = self.jobs_of_pr().await?.into_iter().next();
            return Ok(latest.ok_or_else(|| replies::no_such_job(None)));
        };
        match self.engine.store.find_job(wanted.as_str()).await {
            Ok(job) if job.repo.as_ref() == Some(&self.step.env.repository) => Ok(Ok(job)),
            Ok(_) | Err(StoreError::JobNotFound(_) | StoreError::AmbiguousJob { .. }) => {
                Ok(Err(replies::no_such_job(Some(wanted.as_str()))))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn cancel(&self, wanted: Option<&JobRef>) -> anyhow::Result<String> {
        let job = match self.resolve(wanted).await? {
            Ok(job) => job,
            Err(reply) => return Ok(reply),
        };
        let reason = replies::cancel_reason(&replies::CancelReason::Command {
            user: self.comment.author_login.clone(),
        });
        let holder = Holder::this_process(self.engine.instance.clone());
        let by = holder.to_string();
        let outcome = self
            .engine
            .store
            .request_cancel(&job, &reason, &by, &holder)
            .await?;
        let reply = match outcome {
            CancelOutcome::Cancelled => CancelReply::Cancelled,
            CancelOutcome::Stopping(h) => CancelReply::Stopping { holder: Some(h) },
            CancelOutcome::AlreadyFinished(s) => CancelReply::AlreadyFinished(s),
        };
        Ok(replies::cancel(&job::job_link(self.step, &job), &reply))
    }

    /// `run`, `resume`, `retry`: one tracking comment, then the job.
    async fn job_command(
        &self,
        line: &ParsedLine,
        command: &PrCommand,
        permission: Permission,
    ) -> anyhow::Result<Option<super::ActionRun>> {
        let (_, workflow_rel) = super::resolve_workflow(&self.config.workflow, self.repo)?;
        let tracking = Tracking {
            line: line.line.clone(),
            user: self.comment.author_login.clone(),
            doing: match command {
                PrCommand::Run { .. } => "running",
                PrCommand::Resume { .. } => "resuming",
                _ => "retrying the dead-letter queue of",
            },
            workflow: workflow_rel.clone(),
            run_url: self.step.env.attempt_url(),
        };
        let id = self.reply(&action_replies::started(&tracking)).await?;
        let tracked = TrackedComment {
            client: self.client.clone(),
            repo: self.step.env.repository.clone(),
            comment: id,
            tracking,
        };
        let planned = match command {
            PrCommand::Run { workflow } => {
                self.plan_run(workflow.as_deref(), &workflow_rel, permission)
                    .await
            }
            PrCommand::Resume { job, budget } => {
                let budget = budget.map(|usd| crate::workflow::Budget {
                    max_cost_usd: Some(usd.get()),
                    ..Default::default()
                });
                self.plan_existing(job.as_ref(), |job| Start::Resume { job, budget })
                    .await
            }
            PrCommand::Retry { job, item } => {
                let items: Vec<ItemKey> = item.iter().map(|i| ItemKey(i.clone())).collect();
                self.plan_retry(job.as_ref(), items).await
            }
            PrCommand::Status | PrCommand::Help | PrCommand::Cancel { .. } => {
                unreachable!("not a job command")
            }
        };
        let planned = match planned {
            Ok(Ok(p)) => p,
            Ok(Err(refusal)) => {
                tracked.set(&refusal).await;
                return Ok(None);
            }
            Err(e) => {
                tracked
                    .set(&replies::command_failed(command.name(), &format!("{e:#}")))
                    .await;
                return Err(e);
            }
        };
        let (workflow, _) = super::resolve_workflow(&self.config.workflow, self.repo)?;
        let request = JobRequest {
            workflow,
            start: planned.start,
            preface: planned.preface,
            head_sha: planned.head_sha,
            pr: Some(self.pr()),
            tracking: Some((tracked, command.name())),
        };
        job::run_job(self.engine, self.step, self.config, self.repo, request)
            .await
            .map(Some)
    }

    /// `run`: the pull request's head, checked out here; refused for a fork unless a
    /// maintainer asks.
    async fn plan_run(
        &self,
        wanted: Option<&str>,
        ours: &str,
        permission: Permission,
    ) -> anyhow::Result<Result<Planned, String>> {
        if let Some(name) = wanted
            && !names_workflow(name, ours)
        {
            return Ok(Err(action_replies::other_workflow(name, ours)));
        }
        let pr = self
            .client
            .pull_request(TOKEN_INSTALLATION, &self.step.env.repository, self.pr())
            .await
            .context("cannot read the pull request")?;
        if pr.is_fork && !may_run_fork(permission) {
            return Ok(Err(action_replies::fork_refused(
                &self.comment.author_login,
            )));
        }
        branch::checkout_pull_request(self.repo, self.pr().0, &pr.head_sha.0).await?;
        // A re-run of this comment's workflow run continues the job its earlier attempt started.
        let jobs = self
            .engine
            .store
            .find_jobs_by_head_sha(&self.step.env.repository, &pr.head_sha.0)
            .await?;
        let (start, preface) =
            match start::rerun_of_earlier_attempt(self.engine, self.step, self.repo, ours, &jobs)
                .await?
            {
                Some(chosen) => (chosen.start, chosen.preface),
                None => (Start::New, None),
            };
        Ok(Ok(Planned {
            start,
            preface,
            head_sha: pr.head_sha.0,
        }))
    }

    /// `resume`: the named job or the pull request's latest, if it can continue here.
    async fn plan_existing(
        &self,
        wanted: Option<&JobRef>,
        start: impl FnOnce(crate::types::JobId) -> Start,
    ) -> anyhow::Result<Result<Planned, String>> {
        let job = match self.resolve(wanted).await? {
            Ok(job) => job,
            Err(reply) => return Ok(Err(reply)),
        };
        if let Some(why) = start::cannot_continue(self.repo, &job).await? {
            return Ok(Err(action_replies::cannot_continue(job.id, &why)));
        }
        Ok(Ok(Planned {
            start: start(job.id),
            preface: None,
            head_sha: job
                .head_sha
                .map(|s| s.0)
                .unwrap_or_else(|| self.step.event.head_sha.clone()),
        }))
    }

    /// `retry`: as `resume`, and a named item must be in the job's dead-letter queue.
    async fn plan_retry(
        &self,
        wanted: Option<&JobRef>,
        items: Vec<ItemKey>,
    ) -> anyhow::Result<Result<Planned, String>> {
        if let Some(key) = items.first() {
            let job = match self.resolve(wanted).await? {
                Ok(job) => job,
                Err(reply) => return Ok(Err(reply)),
            };
            let dlq = self.engine.store.dlq(Some(job.id)).await?;
            if !dlq.iter().any(|d| &d.key == key) {
                return Ok(Err(replies::not_in_dlq(
                    &job::job_link(self.step, &job),
                    &key.0,
                )));
            }
        }
        self.plan_existing(wanted, |job| Start::Retry { job, items })
            .await
    }
}

/// A job command's start and the commit it reports on.
struct Planned {
    start: Start,
    /// Put before the check run's summary (a re-run names what it continues).
    preface: Option<String>,
    head_sha: String,
}

/// Whether `run workflow=NAME` names `ours` (repository-relative): its path, file name, or
/// file name without `.yml`/`.yaml`.
pub fn names_workflow(name: &str, ours: &str) -> bool {
    let file = ours.rsplit('/').next().unwrap_or(ours);
    let stem = file
        .strip_suffix(".yml")
        .or_else(|| file.strip_suffix(".yaml"))
        .unwrap_or(file);
    [ours, file, stem].contains(&name.trim_start_matches("./"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workflow_by_path_file_or_stem() {
        for name in [
            ".prodigy/review.yml",
            "./.prodigy/review.yml",
            "review.yml",
            "review",
        ] {
            assert!(names_workflow(name, ".prodigy/review.yml"), "{name}");
        }
        assert!(!names_workflow("lint", ".prodigy/review.yml"));
    }

    fn example(file: &str, edit: impl FnOnce(&mut serde_json::Value)) -> IssueCommentEvent {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/github/webhooks/issue_comment")
            .join(file);
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        edit(&mut v);
        match parse_event("issue_comment", &serde_json::to_vec(&v).unwrap()).unwrap() {
            WebhookEvent::IssueComment(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_new_comments_on_pull_requests_by_people_are_answered() {
        let on_pr = |v: &mut serde_json::Value| v["issue"]["pull_request"] = serde_json::json!({});
        assert_eq!(ignored(&example("created.payload.json", on_pr)), None);
        let c = example("created.payload.json", on_pr);
        assert_eq!(c.author_association.as_deref(), Some("OWNER"));
        assert!(
            ignored(&example("created.payload.json", |_| {}))
                .is_some_and(|w| w.contains("not on a pull request"))
        );
        for file in ["edited.payload.json", "deleted.payload.json"] {
            assert!(
                ignored(&example(file, on_pr)).is_some_and(|w| w.contains("edited or deleted")),
                "{file}"
            );
        }
        let bot = example("created.payload.json", |v| {
            on_pr(v);
            v["comment"]["user"]["type"] = "Bot".into();
        });
        assert_eq!(ignored(&bot), Some("a comment by a bot"));
    }

    #[test]
    fn the_trigger_as_a_mention() {
        assert_eq!(mention(Some("@prodigy-bot")), Some("prodigy-bot"));
        assert_eq!(mention(Some(" prodigy-bot ")), Some("prodigy-bot"));
        assert_eq!(mention(Some("")), None);
        assert_eq!(mention(None), None);
    }
}
