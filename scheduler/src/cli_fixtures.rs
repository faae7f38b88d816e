//! `sluice fixtures …`: the local fixture servers (Steam Web API, news sites, a post
//! stream) and sample-data generators that let the shipped pipelines run without the
//! internet or API keys. See docs/fixtures.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use sluice_fixtures::news::CATEGORIES;
use sluice_fixtures::{
    gen, serve_news_sites, spawn, Clock, Fixtures, FixturesConfig, NewsConfig, PostsConfig,
    RateLimit, SteamConfig,
};

#[derive(Subcommand, Debug)]
pub enum FixturesCommand {
    /// Serve the Steam, news and posts fixtures under /steam, /news and /posts of one port
    /// until Ctrl-C, and print the base URLs to put in DAGs.
    Serve(ServeArgs),
    /// Write a movies-and-TV catalogue CSV (show_id, type, title, …, imdb_score, seasons).
    Csv {
        /// The file to write (parent directories are created).
        path: PathBuf,
        #[arg(long, default_value_t = 3000)]
        rows: u64,
    },
    /// Write .txt files (subject on the first line, body after; some in Korean).
    Files {
        /// The directory to write into (created).
        dir: PathBuf,
        #[arg(long, default_value_t = 20)]
        count: u64,
    },
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port of the combined server (0: any free port).
    #[arg(long, default_value_t = 8089)]
    pub port: u16,
    /// Number of news sites (each with 7 categories).
    #[arg(long, default_value_t = 30)]
    pub news_sites: usize,
    /// Latency before every news page, e.g. 50ms.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub news_delay: Duration,
    /// Also serve each news site on its own port (per-host politeness then applies per site).
    #[arg(long)]
    pub news_ports: bool,
    /// With --news-ports: site i listens on this port + i (default: free ports).
    #[arg(long, requires = "news_ports")]
    pub news_base_port: Option<u16>,
    /// The Steam API key the fixture accepts (default: any non-empty key).
    #[arg(long, env = "SLUICE_FIXTURES_STEAM_KEY")]
    pub steam_key: Option<String>,
    /// Steam rate limit: `N/s` (calls past N in a second get 429) or `every:N[:SECS]`
    /// (every N-th call gets 429 with Retry-After SECS, default 1).
    #[arg(long)]
    pub rate_limit: Option<RateLimit>,
    /// The bearer token the posts fixture requires (default: none).
    #[arg(long)]
    pub posts_bearer: Option<String>,
    /// Posts a search query finds in all.
    #[arg(long, default_value_t = 1000)]
    pub posts_per_query: u64,
}

pub async fn run(cmd: FixturesCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        FixturesCommand::Serve(args) => serve(args).await,
        FixturesCommand::Csv { path, rows } => {
            gen::write_catalogue_file(&path, rows)
                .with_context(|| format!("writing {}", path.display()))?;
            println!("Wrote {rows} catalogue rows to {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        FixturesCommand::Files { dir, count } => {
            let paths = gen::write_text_files(&dir, count)
                .with_context(|| format!("writing into {}", dir.display()))?;
            println!("Wrote {} text files to {}", paths.len(), dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn fixtures(args: &ServeArgs) -> Fixtures {
    Fixtures::new(FixturesConfig {
        steam: SteamConfig {
            key: args.steam_key.clone().filter(|k| !k.is_empty()),
            rate_limit: args.rate_limit,
            clock: Clock::system(),
        },
        news: NewsConfig {
            sites: args.news_sites,
            delay: args.news_delay,
            ..NewsConfig::default()
        },
        posts: PostsConfig {
            bearer: args.posts_bearer.clone(),
            per_query: args.posts_per_query,
            ..PostsConfig::default()
        },
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let fx = fixtures(&args);
    let addr = format!("{}:{}", args.host, args.port);
    let server = spawn(fx.router(), &addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let base = server.url();
    let sites = if args.news_ports {
        Some(
            serve_news_sites(&fx.news, &args.host, args.news_base_port)
                .await
                .context("cannot open the per-site news ports")?,
        )
    } else {
        None
    };
    let cats: Vec<&str> = CATEGORIES.iter().map(|(slug, _)| *slug).collect();
    let last = args.news_sites.saturating_sub(1);
    println!("Sluice fixtures on {base} (Ctrl-C to stop)\n");
    println!("steam   base_url = \"{base}/steam\"");
    println!(
        "        api key: {}; rate limit: {}",
        match &args.steam_key {
            Some(_) => "the one given with --steam-key",
            None => "any non-empty key",
        },
        match args.rate_limit {
            None => "none".to_string(),
            Some(RateLimit::PerSecond { n }) => format!("{n} calls/s"),
            Some(RateLimit::EveryNth { n, retry_after }) => {
                format!("every {n}th call gets 429, Retry-After {retry_after}s")
            }
        }
    );
    println!(
        "news    {} site(s) × 7 categories: {base}/news/site0/ … {base}/news/site{last}/",
        args.news_sites
    );
    println!(
        "        start_urls: {base}/news/site{{i}}/section/{{{}}}",
        cats.join(",")
    );
    println!("        robots.txt: {base}/robots.txt (disallows /news/site{{i}}/private/)");
    println!("posts   url = \"{base}/posts/2/tweets/search/recent\"");
    println!(
        "        query = {{ query = \"…\", max_results = 100 }}, paginate = {{ cursor = \"$.meta.next_token\", cursor_param = \"next_token\" }}, records = \"$.data[*]\""
    );
    if let Some(sites) = &sites {
        println!("\nnews sites on their own ports (start_urls: SITE/section/{{category}}):");
        for (i, url) in sites.urls.iter().enumerate() {
            println!("  site{i:<3} {url}");
        }
    }
    crate::shutdown_on_signals().cancelled().await;
    drop(sites);
    drop(server);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> FixturesCommand {
        let cli = Cli::try_parse_from(args).expect("parses");
        match cli.command {
            Command::Fixtures(cmd) => cmd,
            other => panic!("not a fixtures command: {other:?}"),
        }
    }

    #[test]
    fn serve_flags_parse_with_defaults() {
        let FixturesCommand::Serve(a) = parse(&["sluice", "fixtures", "serve"]) else {
            panic!("serve");
        };
        assert_eq!(
            (a.host.as_str(), a.port, a.news_sites),
            ("127.0.0.1", 8089, 30)
        );
        assert_eq!(a.news_delay, Duration::ZERO);
        assert!(!a.news_ports && a.rate_limit.is_none());
        let FixturesCommand::Serve(a) = parse(&[
            "sluice",
            "fixtures",
            "serve",
            "--port",
            "0",
            "--news-sites",
            "3",
            "--news-delay",
            "50ms",
            "--news-ports",
            "--news-base-port",
            "9100",
            "--steam-key",
            "K",
            "--rate-limit",
            "every:5:2",
        ]) else {
            panic!("serve");
        };
        assert_eq!(a.news_delay, Duration::from_millis(50));
        assert_eq!(a.news_base_port, Some(9100));
        assert_eq!(
            a.rate_limit,
            Some(RateLimit::EveryNth {
                n: 5,
                retry_after: 2
            })
        );
        let fx = fixtures(&a);
        assert_eq!(fx.news.config.sites, 3);
        assert_eq!(fx.steam.config.key.as_deref(), Some("K"));
        assert!(
            Cli::try_parse_from(["sluice", "fixtures", "serve", "--rate-limit", "lots"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["sluice", "fixtures", "serve", "--news-base-port", "9100"])
                .is_err(),
            "--news-base-port needs --news-ports"
        );
    }

    #[tokio::test]
    async fn csv_and_files_write_their_data() {
        let dir = tempfile::tempdir().expect("tmp");
        let csv = dir.path().join("out/titles.csv");
        run(parse(&[
            "sluice",
            "fixtures",
            "csv",
            csv.to_str().expect("utf-8"),
            "--rows",
            "25",
        ]))
        .await
        .expect("csv");
        let text = std::fs::read_to_string(&csv).expect("written");
        assert!(text.starts_with("show_id,type,title,"));
        assert_eq!(text.lines().count(), 26, "header + 25 rows");

        let inbox = dir.path().join("inbox");
        run(parse(&[
            "sluice",
            "fixtures",
            "files",
            inbox.to_str().expect("utf-8"),
            "--count",
            "4",
        ]))
        .await
        .expect("files");
        assert_eq!(std::fs::read_dir(&inbox).expect("dir").count(), 4);
    }
}
