//! `prodigy dlq`: list, show, retry, purge and export the dead-letter queue of a job.

use std::path::Path;

use prodigy::engine::RetryRequest;
use prodigy::types::ItemKey;

use super::{DlqCommand, EXIT_HELD, Global, engine, open_store, output};

pub(super) async fn dlq(g: &Global, command: DlqCommand) -> anyhow::Result<u8> {
    let store = open_store(g).await?;
    match command {
        DlqCommand::List { job, json } => {
            let id = match job {
                Some(j) => Some(store.find_job(&j).await?.id),
                None => None,
            };
            output::dlq_list(&store.dlq(id).await?, json)
        }
        DlqCommand::Show { job, item, json } => {
            let job = store.find_job(&job).await?;
            output::dlq_show(&store, &job, &ItemKey(item), json).await
        }
        DlqCommand::Retry {
            job,
            items,
            error_class,
            max_parallel,
            json,
        } => {
            let job = store.find_job(&job).await?;
            if store.dlq(Some(job.id)).await?.is_empty() {
                out!("job {} has nothing in its DLQ", job.id);
                return Ok(0);
            }
            let eng = engine(g, store, Path::new(&job.repo_path)).await?;
            let req = RetryRequest {
                items: items.into_iter().map(ItemKey).collect(),
                error_class,
                max_parallel,
            };
            let r = eng.retry(job.id, &req).await?;
            Ok(output::resumed(&eng, job.id, r, json, "dlq retry").await)
        }
        DlqCommand::Purge {
            job,
            older_than,
            json,
        } => {
            let job = store.find_job(&job).await?;
            let cutoff = older_than.map(|age| chrono::Utc::now() - age);
            let holder = prodigy::store::Holder::this_process(None);
            let purged = store
                .with_job_lock(job.id, &holder, async |proof| {
                    store.purge_dlq(proof, cutoff).await
                })
                .await?;
            let n = match purged {
                prodigy::store::Exclusive::Performed(n) => n,
                prodigy::store::Exclusive::Held { holder, since } => {
                    eout!(
                        "job {} is held by {holder} since {since}; purge it when that run ends",
                        job.id
                    );
                    return Ok(EXIT_HELD);
                }
            };
            if json {
                out!("{}", serde_json::json!({ "job": job.id, "removed": n }));
            } else {
                out!("removed {} DLQ rows of job {}", n, job.id);
            }
            Ok(0)
        }
        DlqCommand::Export { job, format } => {
            let job = store.find_job(&job).await?;
            output::dlq_export(&store, job.id, format).await
        }
    }
}
