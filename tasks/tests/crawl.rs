//! The `crawl` kind against fixture news sites on 127.0.0.1: section index → category
//! list pages (paginated) → article pages, with a robots.txt, EUC-KR pages, tracking
//! parameters and canonical links, as Korean news sites serve them. The fixture counts
//! requests per path, records when each request arrived and how many were in flight.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Map, Value};
use sluice_tasks::{MemoryState, Registry, TaskContext, TaskError, TaskState, TryLog};
use tokio::sync::Notify;

// ---------------------------------------------------------------------------------
// The fixture site
// ---------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Charset {
    Utf8,
    /// EUC-KR, declared in the Content-Type header only.
    EucKrHeader,
    /// EUC-KR, declared only in a `<meta http-equiv>` (Content-Type without charset).
    EucKrMeta,
}

#[derive(Clone)]
struct Article {
    id: u32,
    /// First path segment: `news`, or `private` (disallowed by robots.txt).
    section: &'static str,
    categories: Vec<&'static str>,
    title: String,
    author: &'static str,
    paragraphs: Vec<String>,
    tags: Vec<&'static str>,
    charset: Charset,
    canonical: bool,
    headline: bool,
}

fn art(id: u32, categories: &[&'static str], title: &str) -> Article {
    Article {
        id,
        section: "news",
        categories: categories.to_vec(),
        title: title.to_string(),
        author: "김민수",
        paragraphs: vec![
            format!("{title} 관련 첫 문단입니다."),
            "관계자는 \"추가 논의가 필요하다\"고 밝혔다.".to_string(),
        ],
        tags: vec!["뉴스", "속보"],
        charset: Charset::Utf8,
        canonical: true,
        headline: true,
    }
}

/// Gauge of requests in flight, with its high-water mark.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

struct Site {
    addr: OnceLock<SocketAddr>,
    articles: Mutex<Vec<Article>>,
    page_size: usize,
    /// Extra `<li>` links on page 1 of the politics list.
    extra_links: Vec<String>,
    /// robots.txt body; None answers 404.
    robots: Option<String>,
    /// Server-side latency of every page (not robots.txt).
    page_delay: Duration,
    hits: Mutex<HashMap<String, usize>>,
    /// (arrival, path, Host header) of every request, robots.txt included.
    log: Mutex<Vec<(Instant, String, String)>>,
    in_flight: Gauge,
    /// In flight across several sites.
    shared: Option<Arc<Gauge>>,
    /// Bytes of the HTML pages served with 200.
    page_bytes: AtomicU64,
    pages_served: AtomicU64,
    /// Notified when a page (not robots.txt) request arrives.
    page_requested: Notify,
}

impl Default for Site {
    fn default() -> Self {
        Site {
            addr: OnceLock::new(),
            articles: Mutex::new(Vec::new()),
            page_size: 3,
            extra_links: Vec::new(),
            robots: Some(ROBOTS.to_string()),
            page_delay: Duration::ZERO,
            hits: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            in_flight: Gauge::default(),
            shared: None,
            page_bytes: AtomicU64::new(0),
            pages_served: AtomicU64::new(0),
            page_requested: Notify::new(),
        }
    }
}

impl Site {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr.get().expect("bound"))
    }
    fn hits(&self, path: &str) -> usize {
        self.hits
            .lock()
            .expect("lock")
            .get(path)
            .copied()
            .unwrap_or(0)
    }
    fn article_hits(&self) -> HashMap<String, usize> {
        self.hits
            .lock()
            .expect("lock")
            .iter()
            .filter(|(p, _)| p.contains("/article/"))
            .map(|(p, n)| (p.clone(), *n))
            .collect()
    }
    fn add(&self, a: Article) {
        self.articles.lock().expect("lock").push(a);
    }
}

const ROBOTS: &str = "# 한빛일보 robots.txt
User-agent: *
Disallow: /private/
Disallow: /search

User-agent: StrictBot
Disallow: /

Sitemap: /sitemap.xml
";

/// The newspaper: politics 1–4, economy 3 (cross-listed), 5–7; 5 and 6 in EUC-KR, 2
/// without a canonical link, 7 without a headline, 77 under /private/.
fn paper() -> Site {
    let mut a2 = art(2, &["politics"], "대통령, 국무회의 주재");
    a2.canonical = false;
    let mut a5 = art(5, &["economy"], "코스피 2,700선 회복");
    a5.charset = Charset::EucKrHeader;
    a5.author = "이서연";
    let mut a6 = art(6, &["economy"], "반도체 수출 역대 최대");
    a6.charset = Charset::EucKrMeta;
    a6.author = "박지훈";
    let mut a7 = art(7, &["economy"], "부동산 시장 관망세");
    a7.headline = false;
    let mut a77 = art(77, &[], "비공개 내부 문서");
    a77.section = "private";
    let mut a4 = art(4, &["politics"], "여야 대표 회담 성사");
    a4.tags = vec!["정치", "국회"];
    Site {
        articles: Mutex::new(vec![
            art(1, &["politics"], "국회, 예산안 처리 합의"),
            a2,
            art(3, &["politics", "economy"], "한은, 기준금리 동결"),
            a4,
            a5,
            a6,
            a7,
            a77,
        ]),
        extra_links: vec![
            r#"<li><a class="headline" href="/news/article/404">삭제된 기사</a></li>"#.into(),
            r#"<li><a class="headline" href="/private/article/77?utm_source=list">비공개</a></li>"#
                .into(),
            // Another host (same machine): ignored with same_host = true.
            "<li><a class=\"headline\" href=\"http://localhost:{port}/news/article/1\">외부 링크</a></li>".into(),
        ],
        ..Site::default()
    }
}

/// `n` plain articles in one category.
fn simple(n: u32, page_size: usize) -> Site {
    Site {
        articles: Mutex::new(
            (1..=n)
                .map(|i| art(i, &["politics"], &format!("기사 제목 {i}")))
                .collect(),
        ),
        page_size,
        ..Site::default()
    }
}

fn commas(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn html(site: &Site, body: String) -> Response {
    site.page_bytes
        .fetch_add(body.len() as u64, Ordering::SeqCst);
    site.pages_served.fetch_add(1, Ordering::SeqCst);
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

async fn index(State(site): State<Arc<Site>>) -> Response {
    let body = r#"<!DOCTYPE html>
<html lang="ko"><head><meta charset="utf-8"><title>한빛일보 - 뉴스</title></head>
<body>
<nav class="sections">
  <a href="/news/list/politics">정치</a>
  <a href="/news/list/economy?utm_source=gnb">경제</a>
</nav>
<div class="banner"><a href="/event/subscribe">구독하기</a></div>
</body></html>"#;
    html(&site, body.to_string())
}

async fn list(
    State(site): State<Arc<Site>>,
    Path(cat): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    let mut items: Vec<Article> = site
        .articles
        .lock()
        .expect("lock")
        .iter()
        .filter(|a| a.categories.contains(&cat.as_str()))
        .cloned()
        .collect();
    items.sort_by_key(|a| std::cmp::Reverse(a.id));
    let pages = items.len().div_ceil(site.page_size).max(1);
    let port = site.addr.get().expect("bound").port();
    let mut lis = String::new();
    for a in items
        .iter()
        .skip((page - 1) * site.page_size)
        .take(site.page_size)
    {
        let from = if cat == "economy" {
            "from=economy&"
        } else {
            ""
        };
        lis.push_str(&format!(
            "<li><a class=\"headline\" href=\"/{}/article/{}?{from}utm_source=list&amp;utm_medium=web#top\">{}</a> <span class=\"date\">05.{:02}</span></li>\n",
            a.section, a.id, a.title, a.id
        ));
    }
    if cat == "politics" && page == 1 {
        for l in &site.extra_links {
            lis.push_str(&l.replace("{port}", &port.to_string()));
        }
    }
    let next = if page < pages {
        format!(
            "<a class=\"next\" href=\"/news/list/{cat}?page={}\">다음</a>",
            page + 1
        )
    } else {
        String::new()
    };
    let body = format!(
        r#"<!DOCTYPE html>
<html lang="ko"><head><meta charset="utf-8"><title>{cat} - 한빛일보</title></head>
<body>
<nav class="sections"><a href="/news/list/politics">정치</a><a href="/news/list/economy">경제</a></nav>
<ul class="article-list">
{lis}</ul>
<div class="paging"><strong>{page}</strong> {next}</div>
</body></html>"#
    );
    html(&site, body)
}

fn article_html(a: &Article) -> String {
    let meta = match a.charset {
        Charset::Utf8 => r#"<meta charset="utf-8">"#,
        Charset::EucKrHeader => "",
        Charset::EucKrMeta => {
            r#"<meta http-equiv="Content-Type" content="text/html; charset=euc-kr">"#
        }
    };
    let canonical = if a.canonical {
        format!(
            r#"<link rel="canonical" href="/{}/article/{}">"#,
            a.section, a.id
        )
    } else {
        String::new()
    };
    let headline = if a.headline {
        format!(r#"<h1 class="headline">{}</h1>"#, a.title)
    } else {
        String::new()
    };
    let paragraphs: String = a
        .paragraphs
        .iter()
        .map(|p| format!("  <p>{p}</p>\n"))
        .collect();
    let tags: String = a
        .tags
        .iter()
        .map(|t| format!(r#"<a class="tag" href="/tag/{t}">#{t}</a> "#))
        .collect();
    format!(
        r#"<!DOCTYPE html>
<html lang="ko">
<head>
{meta}
<title>{title} | 한빛일보</title>
<meta property="og:title" content="{title}">
<meta property="article:published_time" content="2024-05-{id:02}T09:{id:02}:00+09:00">
{canonical}
</head>
<body>
<header class="gnb"><a href="/">한빛일보</a></header>
<div class="article-head">
  {headline}
  <div class="byline">
    <span class="reporter">{author} 기자</span>
    <span class="info">입력 2024.05.{id:02} 09:{id:02}</span>
    <span class="info">조회수 {views}</span>
  </div>
</div>
<div id="article-body">
{paragraphs}</div>
<div class="tags">{tags}</div>
<ul class="related"><li><a href="/news/article/1">관련 기사</a></li></ul>
</body>
</html>"#,
        title = a.title,
        id = a.id,
        author = a.author,
        views = commas(12_345 + u64::from(a.id) * 1_000),
    )
}

async fn article(
    State(site): State<Arc<Site>>,
    Path((section, id)): Path<(String, String)>,
) -> Response {
    let found = site
        .articles
        .lock()
        .expect("lock")
        .iter()
        .find(|a| a.section == section && a.id.to_string() == id)
        .cloned();
    let Some(a) = found else {
        return (
            StatusCode::NOT_FOUND,
            "<h1>404 기사를 찾을 수 없습니다</h1>",
        )
            .into_response();
    };
    let text = article_html(&a);
    match a.charset {
        Charset::Utf8 => html(&site, text),
        enc => {
            let (bytes, _, unmappable) = encoding_rs::EUC_KR.encode(&text);
            assert!(!unmappable, "fixture text fits EUC-KR");
            let bytes = bytes.into_owned();
            site.page_bytes
                .fetch_add(bytes.len() as u64, Ordering::SeqCst);
            site.pages_served.fetch_add(1, Ordering::SeqCst);
            let ct = if enc == Charset::EucKrHeader {
                "text/html; charset=EUC-KR"
            } else {
                "text/html"
            };
            ([(header::CONTENT_TYPE, ct)], bytes).into_response()
        }
    }
}

async fn robots(State(site): State<Arc<Site>>) -> Response {
    match &site.robots {
        Some(r) => ([(header::CONTENT_TYPE, "text/plain")], r.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

async fn track(State(site): State<Arc<Site>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    site.log
        .lock()
        .expect("lock")
        .push((Instant::now(), path.clone(), host));
    *site
        .hits
        .lock()
        .expect("lock")
        .entry(path.clone())
        .or_default() += 1;
    site.in_flight.enter();
    if let Some(g) = &site.shared {
        g.enter();
    }
    if path != "/robots.txt" {
        site.page_requested.notify_one();
        if !site.page_delay.is_zero() {
            // Server latency (what makes requests overlap), not a wait in the test.
            tokio::time::sleep(site.page_delay).await;
        }
    }
    let resp = next.run(req).await;
    site.in_flight.leave();
    if let Some(g) = &site.shared {
        g.leave();
    }
    resp
}

async fn serve(site: Site) -> Arc<Site> {
    let site = Arc::new(site);
    let router = Router::new()
        .route("/robots.txt", get(robots))
        .route("/news/", get(index))
        .route("/news/list/{cat}", get(list))
        .route("/{section}/article/{id}", get(article))
        .layer(middleware::from_fn_with_state(site.clone(), track))
        .with_state(site.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    site.addr
        .set(listener.local_addr().expect("addr"))
        .expect("once");
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
    site
}

// ---------------------------------------------------------------------------------
// Running the kind
// ---------------------------------------------------------------------------------

async fn run(ctx: &TaskContext, a: Value) -> Result<Value, TaskError> {
    let args: Map<String, Value> = a.as_object().expect("object").clone();
    Registry::builtin()
        .get("crawl")
        .expect("crawl registered")
        .run(ctx, args)
        .await
}

fn ctx() -> TaskContext {
    TaskContext::detached("news", "crawl")
}

/// A context whose log goes to a file, returned with the file's path.
fn logged_ctx(dir: &tempfile::TempDir) -> (TaskContext, std::path::PathBuf) {
    let path = dir.path().join("try.log");
    let ctx = TaskContext {
        log: TryLog::open(&path).expect("log"),
        ..ctx()
    };
    (ctx, path)
}

/// Keys of the main newspaper crawl: index → categories → page 2.
fn news_args(site: &Site) -> Value {
    json!({
        "start_urls": site.url("/news/"),
        "follow": ["nav.sections a", { "selector": "div.paging a.next" }],
        "max_depth": 2,
        "article_links": "ul.article-list a.headline",
        "fields": {
            "title": { "selector": "h1.headline", "required": true },
            "og_title": { "selector": "meta[property='og:title']", "attr": "content" },
            "published": {
                "selector": "span.info",
                "regex": "입력\\s*(\\d{4}\\.\\d{2}\\.\\d{2} \\d{2}:\\d{2})",
                "date_format": "%Y.%m.%d %H:%M",
                "timezone": "Asia/Seoul"
            },
            "published_meta": {
                "selector": "meta[property='article:published_time']",
                "attr": "content",
                "date_format": "rfc3339"
            },
            "author": { "selector": "span.reporter", "regex": "^(\\S+)" },
            "views": { "selector": "span.info", "regex": "조회수\\s*([\\d,]+)", "type": "int" },
            "body": { "selector": "#article-body p", "all": true },
            "tags": { "selector": "div.tags a.tag", "regex": "#(.+)", "all": true },
            "photo": "figure.photo img"
        },
        "retry_delay": "10ms",
        "max_attempts": 2
    })
}

fn urls(recs: &Value) -> Vec<String> {
    recs.as_array()
        .expect("records")
        .iter()
        .map(|r| r["url"].as_str().expect("url").to_string())
        .collect()
}

fn article_urls(site: &Site, ids: &[u32]) -> Vec<String> {
    ids.iter()
        .map(|i| site.url(&format!("/news/article/{i}")))
        .collect()
}

// ---------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn crawls_list_pages_and_extracts_fields_from_articles() {
    let site = serve(paper()).await;
    let dir = tempfile::tempdir().expect("tmp");
    let (ctx, log_path) = logged_ctx(&dir);
    let out = run(&ctx, news_args(&site)).await.expect("crawl succeeds");

    // Discovery order: politics p1 (4, 3, 2), economy p1 (7 skipped, 6, 5), politics
    // p2 (1). Article 3, linked again from economy p2 with other parameters, is the same
    // canonical article and comes once.
    assert_eq!(
        urls(&out),
        article_urls(&site, &[4, 3, 2, 6, 5, 1]),
        "{out:#}"
    );

    let a4 = &out[0];
    assert_eq!(a4["title"], "여야 대표 회담 성사");
    assert_eq!(a4["og_title"], "여야 대표 회담 성사");
    assert_eq!(a4["published"], "2024-05-04T09:04:00+09:00");
    assert_eq!(a4["published_meta"], "2024-05-04T09:04:00+09:00");
    assert_eq!(a4["author"], "김민수");
    assert_eq!(a4["views"], 16_345);
    assert_eq!(
        a4["body"],
        json!([
            "여야 대표 회담 성사 관련 첫 문단입니다.",
            "관계자는 \"추가 논의가 필요하다\"고 밝혔다."
        ])
    );
    assert_eq!(a4["tags"], json!(["정치", "국회"]));
    assert_eq!(a4["photo"], Value::Null);
    chrono::DateTime::parse_from_rfc3339(a4["fetched_at"].as_str().expect("fetched_at"))
        .expect("RFC 3339");
    let keys: Vec<&String> = a4.as_object().expect("object").keys().collect();
    assert_eq!(keys.first().map(|k| k.as_str()), Some("url"));

    // Article 2 has no canonical link: its URL is the fetched one without tracking
    // parameters and fragment.
    assert_eq!(out[2]["title"], "대통령, 국무회의 주재");
    assert_eq!(out[2]["url"], site.url("/news/article/2"));

    // Never requested: the robots-disallowed article and the off-site link.
    assert_eq!(site.hits("/private/article/77"), 0);
    let log = site.log.lock().expect("lock").clone();
    assert!(
        log.iter()
            .all(|(_, _, host)| !host.starts_with("localhost")),
        "off-site link was followed"
    );
    assert_eq!(site.hits("/robots.txt"), 1, "robots.txt once per run");
    // Article pages are not scanned for links (the related link to 1 is not a list).
    assert_eq!(site.hits("/news/article/1"), 1);
    // Fetched but not emitted: the missing article, the one without a headline.
    assert_eq!(site.hits("/news/article/404"), 1);
    assert_eq!(site.hits("/news/article/7"), 1);
    // 3 twice: as /news/article/3 and as /news/article/3?from=economy.
    assert_eq!(site.hits("/news/article/3"), 2);

    // Metrics: every page fetched and its bytes in, articles out.
    let m = ctx.metrics.snapshot();
    assert_eq!(m.records_out, 6);
    assert_eq!(m.records_in, site.pages_served.load(Ordering::SeqCst));
    assert_eq!(m.records_in, 13, "5 list pages + 8 article pages");
    assert_eq!(m.bytes_in, site.page_bytes.load(Ordering::SeqCst));

    let text = std::fs::read_to_string(&log_path).expect("log");
    let summary = text
        .lines()
        .find(|l| l.contains("article(s) emitted"))
        .expect("summary line");
    for part in [
        "13 page(s) fetched (5 list, 8 article)",
        "6 article(s) emitted",
        "1 duplicate(s)",
        "1 disallowed by robots.txt",
        "1 skipped (required field missing)",
        "1 error(s)",
        "1 off-site link(s) ignored",
    ] {
        assert!(summary.contains(part), "{part:?} not in {summary}");
    }
    assert!(
        text.contains("/news/article/7") && text.contains("required field `title` missing"),
        "{text}"
    );
    assert!(
        text.contains("/news/article/404") && text.contains("404"),
        "{text}"
    );
}

#[tokio::test]
async fn max_depth_caps_link_following() {
    let site = serve(paper()).await;
    let mut a = news_args(&site);
    a["max_depth"] = json!(1);
    let out = run(&ctx(), a).await.expect("crawl");
    // Page 2 of politics (article 1) is two hops from the index.
    assert_eq!(urls(&out), article_urls(&site, &[4, 3, 2, 6, 5]));
    assert_eq!(site.hits("/news/article/1"), 0);

    let site = serve(paper()).await;
    let mut a = news_args(&site);
    a["max_depth"] = json!(0);
    let out = run(&ctx(), a).await.expect("crawl");
    assert!(urls(&out).is_empty(), "the index itself lists no articles");
    assert_eq!(site.hits("/news/list/politics"), 0);
}

#[tokio::test]
async fn robots_txt_disallowed_pages_are_never_requested() {
    let site = serve(paper()).await;
    let out = run(&ctx(), news_args(&site)).await.expect("crawl");
    assert!(!urls(&out).iter().any(|u| u.contains("/private/")));
    assert_eq!(site.hits("/private/article/77"), 0);

    // The same crawl with robots = false does fetch it (the rule above is what stopped it).
    let site = serve(paper()).await;
    let mut a = news_args(&site);
    a["robots"] = json!(false);
    let out = run(&ctx(), a).await.expect("crawl");
    assert_eq!(site.hits("/private/article/77"), 1);
    assert!(urls(&out).contains(&site.url("/private/article/77")));
    assert_eq!(site.hits("/robots.txt"), 0);

    // A group naming our user-agent token replaces `*`: StrictBot may fetch nothing.
    let site = serve(paper()).await;
    let mut a = news_args(&site);
    a["user_agent"] = json!("StrictBot/2.0 (+https://example.org/bot)");
    let out = run(&ctx(), a)
        .await
        .expect("a disallowed start URL is not an error");
    assert!(urls(&out).is_empty());
    let hits = site.hits.lock().expect("lock").clone();
    assert_eq!(hits, HashMap::from([("/robots.txt".to_string(), 1)]));

    // No robots.txt (404): everything is allowed.
    let mut s = paper();
    s.robots = None;
    let site = serve(s).await;
    let out = run(&ctx(), news_args(&site)).await.expect("crawl");
    assert_eq!(site.hits("/private/article/77"), 1);
    assert_eq!(urls(&out).len(), 7);
}

#[tokio::test]
async fn euc_kr_pages_are_decoded_from_the_header_or_the_meta_tag() {
    let site = serve(paper()).await;
    let mut a = news_args(&site);
    a["start_urls"] = json!([site.url("/news/list/economy")]);
    a["max_depth"] = json!(0);
    let out = run(&ctx(), a.clone()).await.expect("crawl");
    assert_eq!(urls(&out), article_urls(&site, &[6, 5]), "{out:#}");
    // 6: charset only in <meta http-equiv>; 5: only in the Content-Type header.
    assert_eq!(out[0]["title"], "반도체 수출 역대 최대");
    assert_eq!(out[0]["author"], "박지훈");
    assert_eq!(out[0]["views"], 18_345);
    assert_eq!(out[1]["title"], "코스피 2,700선 회복");
    assert_eq!(out[1]["author"], "이서연");
    assert_eq!(out[1]["published"], "2024-05-05T09:05:00+09:00");
    assert_eq!(out[1]["body"][0], "코스피 2,700선 회복 관련 첫 문단입니다.");

    // Forcing UTF-8 shows the detection is what made the text right.
    a["encoding"] = json!("utf-8");
    let out = run(&ctx(), a).await.expect("crawl");
    assert_eq!(out.as_array().map(Vec::len), Some(2));
    assert_ne!(out[0]["title"], "반도체 수출 역대 최대");
    assert_ne!(out[1]["title"], "코스피 2,700선 회복");
}

/// Runs the crawl as one DAG run; commits its proposals if `succeeds`. Returns the
/// records and the proposals.
async fn dag_run(
    state: &Arc<MemoryState>,
    a: Value,
    succeeds: bool,
) -> (Value, Vec<(String, String)>) {
    let ctx = TaskContext {
        state: Arc::new(TaskState::new(state.clone(), "news.crawl".into())),
        ..ctx()
    };
    let out = run(&ctx, a).await.expect("crawl");
    let proposals = ctx.state.take_proposals();
    if succeeds {
        state.commit("news.crawl", proposals.clone());
    }
    (out, proposals)
}

#[tokio::test]
async fn committed_articles_are_not_fetched_again_and_only_new_ones_are_emitted() {
    let site = serve(paper()).await;
    let state = Arc::new(MemoryState::default());
    let a = news_args(&site);

    let (first, proposals) = dag_run(&state, a.clone(), true).await;
    assert_eq!(urls(&first), article_urls(&site, &[4, 3, 2, 6, 5, 1]));
    let proposed: HashMap<String, String> = proposals.into_iter().collect();
    for u in urls(&first) {
        let at = proposed.get(&u).unwrap_or_else(|| panic!("{u} proposed"));
        chrono::DateTime::parse_from_rfc3339(at).expect("fetch time");
    }
    // The economy links differ from their canonical URLs: proposed too, so the next run
    // skips them without a request.
    assert!(proposed.contains_key(&site.url("/news/article/5?from=economy")));
    assert!(proposed.contains_key(&site.url("/news/article/3?from=economy")));
    // Skipped and failed articles are not: they are tried again.
    assert!(!proposed
        .keys()
        .any(|k| k.contains("/article/7") || k.contains("/article/404")));

    let before = site.article_hits();
    let mut new = art(8, &["politics"], "속보: 새 총리 지명");
    new.tags = vec!["정치"];
    site.add(new);
    let (second, _) = dag_run(&state, a.clone(), true).await;
    assert_eq!(urls(&second), article_urls(&site, &[8]), "{second:#}");
    assert_eq!(second[0]["title"], "속보: 새 총리 지명");
    // Already-seen articles were not even requested again.
    let after = site.article_hits();
    for id in [1, 2, 3, 4, 5, 6] {
        let p = format!("/news/article/{id}");
        assert_eq!(after.get(&p), before.get(&p), "{p} fetched again");
    }
    assert_eq!(after.get("/news/article/8"), Some(&1));
    assert_eq!(
        after.get("/news/article/7").copied(),
        before.get("/news/article/7").map(|n| n + 1),
        "a skipped article is retried"
    );

    let (third, _) = dag_run(&state, a, true).await;
    assert!(urls(&third).is_empty(), "{third:#}");
}

#[tokio::test]
async fn a_failed_run_leaves_its_articles_to_the_next_run() {
    let site = serve(paper()).await;
    let state = Arc::new(MemoryState::default());
    let a = news_args(&site);
    let expected = article_urls(&site, &[4, 3, 2, 6, 5, 1]);

    let (first, proposals) = dag_run(&state, a.clone(), false).await;
    assert_eq!(urls(&first), expected);
    assert!(!proposals.is_empty());
    // That run failed: nothing was committed, so the same articles come again.
    let (second, _) = dag_run(&state, a.clone(), true).await;
    assert_eq!(urls(&second), expected);
    let (third, _) = dag_run(&state, a, true).await;
    assert!(urls(&third).is_empty());
}

#[tokio::test]
async fn max_articles_caps_a_run_and_the_rest_come_next_time() {
    let site = serve(paper()).await;
    let state = Arc::new(MemoryState::default());
    let mut a = news_args(&site);
    a["max_articles"] = json!(2);
    let (first, _) = dag_run(&state, a.clone(), true).await;
    assert_eq!(urls(&first), article_urls(&site, &[4, 3]));
    a["max_articles"] = json!(null);
    let (second, _) = dag_run(&state, a, true).await;
    assert_eq!(urls(&second), article_urls(&site, &[2, 6, 5, 1]));
}

fn list_args(starts: Vec<String>, per_host: u64) -> Value {
    json!({
        "start_urls": starts,
        "article_links": "ul.article-list a.headline",
        "fields": { "title": { "selector": "h1.headline", "required": true } },
        "per_host_concurrency": per_host,
        "concurrency": 16,
    })
}

#[tokio::test]
async fn per_host_concurrency_is_capped_while_hosts_are_crawled_in_parallel() {
    for cap in [2usize, 4] {
        let both = Arc::new(Gauge::default());
        let mk = || Site {
            page_delay: Duration::from_millis(50),
            shared: Some(both.clone()),
            ..simple(8, 20)
        };
        let (s1, s2) = (serve(mk()).await, serve(mk()).await);
        let a = list_args(
            vec![s1.url("/news/list/politics"), s2.url("/news/list/politics")],
            cap as u64,
        );
        let out = run(&ctx(), a).await.expect("crawl");
        assert_eq!(urls(&out).len(), 16);
        // 8 articles per host could all be in flight at once: the cap is what holds them,
        // and it is reached.
        assert_eq!(s1.in_flight.max(), cap, "host 1");
        assert_eq!(s2.in_flight.max(), cap, "host 2");
        // The two hosts were crawled at the same time.
        assert!(
            both.max() > cap && both.max() <= 2 * cap,
            "in flight over both hosts: {}",
            both.max()
        );
    }
}

/// Gaps between consecutive request arrivals at the site.
fn gaps(site: &Site) -> Vec<Duration> {
    let log = site.log.lock().expect("lock");
    log.windows(2).map(|w| w[1].0 - w[0].0).collect()
}

#[tokio::test]
async fn per_host_delay_and_crawl_delay_space_request_starts() {
    // Arrival times are taken by the server, so a request can arrive a little later
    // than it was sent (scheduling on a busy machine) and shorten the next gap by as much.
    let slack = Duration::from_millis(15);

    let site = serve(simple(4, 20)).await;
    let mut a = list_args(vec![site.url("/news/list/politics")], 4);
    a["per_host_delay"] = json!("150ms");
    let out = run(&ctx(), a).await.expect("crawl");
    assert_eq!(urls(&out).len(), 4);
    let g = gaps(&site);
    assert_eq!(g.len(), 5, "robots.txt, the list, 4 articles");
    for d in &g {
        assert!(*d >= Duration::from_millis(150) - slack, "{g:?}");
    }

    // Without a delay, the 4 articles (4 allowed in flight) start together.
    let site = serve(simple(4, 20)).await;
    let out = run(&ctx(), list_args(vec![site.url("/news/list/politics")], 4))
        .await
        .expect("crawl");
    assert_eq!(urls(&out).len(), 4);
    let g = gaps(&site);
    assert!(
        g[2..].iter().any(|d| *d < Duration::from_millis(100)),
        "{g:?}"
    );

    // robots.txt's Crawl-delay applies when longer than per_host_delay.
    let site = serve(Site {
        robots: Some("User-agent: *\nCrawl-delay: 0.2\nDisallow: /private/\n".into()),
        ..simple(3, 20)
    })
    .await;
    let mut a = list_args(vec![site.url("/news/list/politics")], 4);
    a["per_host_delay"] = json!("50ms");
    let out = run(&ctx(), a).await.expect("crawl");
    assert_eq!(urls(&out).len(), 3);
    let g = gaps(&site);
    assert_eq!(g.len(), 4);
    for d in &g {
        assert!(*d >= Duration::from_millis(200) - slack, "{g:?}");
    }
}

#[tokio::test]
async fn bad_arguments_are_fatal_and_name_the_key() {
    let site = serve(paper()).await;
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"fields": {"title": {"selector": "h1[", "required": true}}}),
            "fields.title.selector",
        ),
        (json!({"fields": {"title": "h1:::x"}}), "fields.title"),
        (json!({"article_links": "ul >>> a"}), "article_links"),
        (
            json!({"follow": ["nav a", {"selector": "div..x"}]}),
            "follow[1].selector",
        ),
        (
            json!({"fields": {"views": {"selector": "span", "regex": "(\\d+"}}}),
            "fields.views.regex",
        ),
        (
            json!({"fields": {"d": {"selector": "span", "date_format": "%Y-%Q"}}}),
            "fields.d.date_format",
        ),
        (
            json!({"fields": {"d": {"selector": "span", "colour": "red"}}}),
            "fields.d",
        ),
        (json!({"fields": {"url": "a"}}), "fields.url"),
        (json!({"timezone": "Mars/Olympus"}), "timezone"),
        (json!({"article_links": null}), "article_links"),
        (json!({"fields": {}}), "fields"),
        (json!({"start_urls": "news/"}), "start_urls"),
        (json!({"per_host_concurrency": 0}), "per_host_concurrency"),
        (json!({"per_host_delay": "soon"}), "per_host_delay"),
    ];
    for (patch, key) in cases {
        let mut a = news_args(&site);
        for (k, v) in patch.as_object().expect("object") {
            a[k] = v.clone();
        }
        let err = run(&ctx(), a).await.expect_err("bad args");
        assert!(
            matches!(&err, TaskError::Fatal(m) if m.contains(&format!("`{key}"))),
            "{key}: {err:?}"
        );
    }
    assert!(
        site.hits.lock().expect("lock").is_empty(),
        "arguments are checked before any request"
    );
}

#[tokio::test]
async fn an_unreachable_start_url_fails_naming_it() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let start = format!("http://{addr}/news/list/politics");
    let a = json!({
        "start_urls": [start],
        "article_links": "a",
        "fields": { "title": "h1" },
        "max_attempts": 2,
        "retry_delay": "10ms",
    });
    let err = run(&ctx(), a).await.expect_err("nothing listens");
    assert!(
        matches!(&err, TaskError::Failed(m) if m.contains(&start) && m.contains("after 2 attempt")),
        "{err:?}"
    );

    // A start URL that answers 404 fails the same way.
    let site = serve(paper()).await;
    let start = site.url("/news/gone");
    let mut a = news_args(&site);
    a["start_urls"] = json!(start);
    let err = run(&ctx(), a).await.expect_err("404");
    assert!(
        matches!(&err, TaskError::Failed(m) if m.contains(&start) && m.contains("404")),
        "{err:?}"
    );
}

#[tokio::test]
async fn cancelling_stops_a_crawl_waiting_on_a_slow_page() {
    let site = serve(Site {
        page_delay: Duration::from_secs(60),
        ..paper()
    })
    .await;
    let ctx = ctx();
    let cancel = ctx.cancel.clone();
    let started = Instant::now();
    let (res, ()) = tokio::join!(run(&ctx, news_args(&site)), async {
        site.page_requested.notified().await;
        cancel.cancel();
    });
    assert!(matches!(res, Err(TaskError::Cancelled)), "{res:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}
