//! The baseline for `benches/webhook_ingest.sh`: an axum server whose webhook route answers 200
//! without looking at the request, on the same runtime and HTTP stack as `prodigy serve`.
//!
//!   cargo run --release --example bare_axum -- 127.0.0.1:3999

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3999".to_string());
    // Read the body like a real handler must, then answer.
    let app = Router::new().route(
        "/webhook",
        post(|_body: axum::body::Bytes| async { StatusCode::OK }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await
}
