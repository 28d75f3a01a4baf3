fn main() {
    // The hidden `debug-lock` subcommand (lock tests); the logic lives in the library.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("debug-lock") {
        let flag = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let (Some(url), Some(job)) = (flag("--database-url"), flag("--job")) else {
            eprintln!("usage: prodigy debug-lock --database-url URL --job ID [--hold-secs N]");
            std::process::exit(2);
        };
        let hold = flag("--hold-secs")
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        let code = runtime.block_on(prodigy::store::debug_lock(
            &url,
            &job,
            std::time::Duration::from_secs_f64(hold.max(0.0)),
        ));
        std::process::exit(code);
    }
}
