//! The App's webhook delivery log, as the App itself (JWT): list recent deliveries, page by
//! page, and ask GitHub to deliver one again.

use axum::http::{HeaderMap, Method, header};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::path::encode_segment;
use super::{Auth, GitHubClient, GitHubError};

/// One attempt to deliver a webhook, as GitHub's delivery log lists it (`hook-delivery-item`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct HookDelivery {
    /// This attempt's id (what a redelivery is asked for by).
    pub id: u64,
    /// The `X-GitHub-Delivery` value, shared by every attempt of one delivery.
    pub guid: String,
    pub delivered_at: DateTime<Utc>,
    /// This attempt is a redelivery of an earlier one.
    pub redelivery: bool,
    /// `OK`, or what went wrong (`failed to connect`, `timed out`, `Invalid HTTP Response: 503`).
    pub status: String,
    /// The HTTP status the receiver answered; 0 when it did not answer.
    pub status_code: u16,
    pub event: String,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub installation_id: Option<u64>,
}

impl HookDelivery {
    /// The receiver took it: GitHub says `OK`, or the receiver answered 2xx or 3xx (GitHub's own
    /// `status=success` filter is the 200-399 range).
    pub fn succeeded(&self) -> bool {
        self.status == "OK" || (200..400).contains(&self.status_code)
    }
}

/// One page of the delivery log and the cursor of the next, if there is one.
#[derive(Debug, Clone)]
pub struct DeliveryPage {
    pub deliveries: Vec<HookDelivery>,
    pub next_cursor: Option<String>,
}

impl GitHubClient {
    /// A page of the App's webhook deliveries, newest first (`GET /app/hook/deliveries`);
    /// `cursor` comes from the previous page's [`DeliveryPage::next_cursor`].
    pub async fn hook_deliveries(
        &self,
        per_page: u8,
        cursor: Option<&str>,
    ) -> Result<DeliveryPage, GitHubError> {
        let mut path = format!("/app/hook/deliveries?per_page={}", per_page.clamp(1, 100));
        if let Some(cursor) = cursor {
            path.push_str("&cursor=");
            path.push_str(&encode_segment(cursor));
        }
        let (headers, deliveries) = self
            .call_json_with_headers(Method::GET, &path, Auth::App, None)
            .await?;
        Ok(DeliveryPage {
            deliveries,
            next_cursor: next_cursor(&headers),
        })
    }

    /// Asks GitHub to deliver a delivery attempt again
    /// (`POST /app/hook/deliveries/{id}/attempts`); GitHub answers 202 and delivers it later,
    /// with the delivery's original guid.
    pub async fn redeliver(&self, delivery_id: u64) -> Result<(), GitHubError> {
        let path = format!("/app/hook/deliveries/{delivery_id}/attempts");
        self.call(Method::POST, &path, Auth::App, None).await?;
        Ok(())
    }
}

/// The `cursor` of the `rel="next"` link of a `link` header, e.g.
/// `<https://api.github.com/app/hook/deliveries?per_page=100&cursor=v1_12>; rel="next"`.
fn next_cursor(headers: &HeaderMap) -> Option<String> {
    let link = headers.get(header::LINK)?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| p.trim().trim_start_matches("rel=").trim_matches('"') == "next");
        if !is_next {
            return None;
        }
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let url = url::Url::parse(target).ok()?;
        url.query_pairs()
            .find(|(k, _)| k == "cursor")
            .map(|(_, v)| v.into_owned())
            .filter(|v| !v.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::LINK, value.parse().unwrap());
        h
    }

    #[test]
    fn the_next_cursor_comes_from_the_next_link_only() {
        let h = link(
            "<https://api.github.com/app/hook/deliveries?per_page=2&cursor=v1_11>; rel=\"prev\", \
             <https://api.github.com/app/hook/deliveries?per_page=2&cursor=v1_9%2B1>; rel=\"next\"",
        );
        assert_eq!(next_cursor(&h).as_deref(), Some("v1_9+1"));
        let h = link("<https://api.github.com/app/hook/deliveries?cursor=v1_11>; rel=\"prev\"");
        assert_eq!(next_cursor(&h), None);
        assert_eq!(next_cursor(&HeaderMap::new()), None);
        assert_eq!(next_cursor(&link("garbage")), None);
    }

    #[test]
    fn an_attempt_succeeded_when_github_says_ok_or_the_receiver_answered_2xx() {
        let d = |status: &str, code: u16| HookDelivery {
            id: 1,
            guid: "g".into(),
            delivered_at: Utc::now(),
            redelivery: false,
            status: status.into(),
            status_code: code,
            event: "pull_request".into(),
            action: None,
            installation_id: None,
        };
        assert!(d("OK", 200).succeeded());
        assert!(d("Accepted", 202).succeeded());
        assert!(!d("failed to connect", 0).succeeded());
        assert!(!d("Invalid HTTP Response: 503", 503).succeeded());
        assert!(!d("timed out", 0).succeeded());
    }
}
