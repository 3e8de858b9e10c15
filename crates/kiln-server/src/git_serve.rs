//! git's smart HTTP protocol over a server mirror, scoped to one attempt:
//! how a remote worker fetches the repository and pushes the attempt's
//! branch back (`/api/worker/attempts/{task}/{n}/git/...`).
//!
//! The worker is not trusted with the rest of the mirror. Every git this
//! module starts runs through [`kiln_workspace::git_command`] (no system or
//! global configuration, no `GIT_*` variable of the server's, no hooks) with
//! `-c` options that scope it to [`AttemptRefs`]:
//!
//! - only `refs/remotes/origin/*`, `refs/tags/*` and the attempt's own
//!   `refs/heads/kiln/<task>/<n>` are advertised (`hideRefs`); every other
//!   ref, `HEAD`, other tasks' and other attempts' branches included, is
//!   hidden, and an object is served only when it is reachable from an
//!   advertised ref (protocol v0 in stateless mode checks every `want`
//!   against them; the `allow*SHA1InWant` switches stay off);
//! - protocol v2 is never spoken: its `fetch` takes any object id as a
//!   `want`, advertised or not, so the client's `Git-Protocol` header is
//!   ignored and git clients fall back to v0;
//! - a push is read up to the end of its command list before git starts,
//!   and refused (403, git never started) unless it is exactly one create
//!   or update of the attempt's branch; git then checks every object it
//!   receives (`receive.fsckObjects`) and refuses deletions a second time.
//!
//! Request bodies are capped ([`UPLOAD_BODY_LIMIT`], [`RECEIVE_BODY_LIMIT`],
//! counted after gzip decoding), and git is killed when the client goes
//! away (the response body owns the process).

// The worker routes are the callers; until they are wired, only the tests are.

use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::process::Stdio;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use flate2::write::GzDecoder;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio_util::io::ReaderStream;
use tokio_util::task::AbortOnDropHandle;

use crate::error::ApiError;

/// Most bytes (after decoding) of an upload-pack request: the client's
/// wants and haves, which a fetch of any real repository keeps far below.
pub(crate) const UPLOAD_BODY_LIMIT: u64 = 16 * 1024 * 1024;
/// Most bytes (after decoding) of a push: its command list and pack.
pub(crate) const RECEIVE_BODY_LIMIT: u64 = 2 * 1024 * 1024 * 1024;
/// Most bytes of a push's command list (and shallow lines) read before git
/// starts; one command is about 100 bytes.
const COMMAND_LIST_LIMIT: usize = 64 * 1024;
/// Largest pkt-line git writes or accepts (its `LARGE_PACKET_MAX`).
const PKT_LINE_MAX: usize = 65520;
/// How long a request body may send nothing before it is given up on (and
/// git with it), so a stalled client does not hold a git process forever.
const BODY_IDLE: std::time::Duration = std::time::Duration::from_secs(300);
/// How much of git's stderr is kept for the server's log.
const STDERR_KEPT: usize = 8 * 1024;
/// Compressed bytes decoded at a time, so one chunk of a gzip bomb cannot
/// expand past the body cap by more than deflate's ratio times this.
const GZIP_SLICE: usize = 8 * 1024;

/// What one attempt may see and change in a mirror.
#[derive(Debug, Clone)]
pub(crate) struct AttemptRefs {
    /// The attempt's branch, `kiln/<task>/<n>` (without `refs/heads/`).
    pub(crate) branch: String,
}

/// Which side of git's transfer protocol a request talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GitService {
    /// Fetches and clones: `git-upload-pack`.
    UploadPack,
    /// Pushes: `git-receive-pack`.
    ReceivePack,
}

impl GitService {
    /// The service a request names, in `info/refs?service=` or as the last
    /// path segment of its POST: `git-upload-pack` or `git-receive-pack`.
    pub(crate) fn from_query(service: &str) -> Option<GitService> {
        match service {
            "git-upload-pack" => Some(GitService::UploadPack),
            "git-receive-pack" => Some(GitService::ReceivePack),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            GitService::UploadPack => "git-upload-pack",
            GitService::ReceivePack => "git-receive-pack",
        }
    }

    fn subcommand(self) -> &'static str {
        match self {
            GitService::UploadPack => "upload-pack",
            GitService::ReceivePack => "receive-pack",
        }
    }

    fn body_limit(self) -> u64 {
        match self {
            GitService::UploadPack => UPLOAD_BODY_LIMIT,
            GitService::ReceivePack => RECEIVE_BODY_LIMIT,
        }
    }
}

impl AttemptRefs {
    fn full_ref(&self) -> String {
        format!("refs/heads/{}", self.branch)
    }

    /// Whether the branch is one kiln makes: `kiln/` and path components of
    /// letters, digits, `-`, `_` and `.` (no `..`, no empty component). A
    /// caller's bug must not widen the scope (`kiln` alone would un-hide
    /// every attempt's branch).
    fn is_well_formed(&self) -> bool {
        let Some(rest) = self.branch.strip_prefix("kiln/") else {
            return false;
        };
        !rest.is_empty()
            && rest.split('/').all(|part| {
                !part.is_empty()
                    && !part.starts_with('.')
                    && !part.ends_with(".lock")
                    && !part.contains("..")
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            })
    }

    /// The `-c` options that scope `service` to this attempt. For
    /// `hideRefs` the last matching entry wins, so everything is hidden
    /// first and the visible namespaces are negated after it.
    fn config(&self, service: GitService) -> Vec<String> {
        let section = match service {
            GitService::UploadPack => "uploadpack",
            GitService::ReceivePack => "receive",
        };
        let mut options: Vec<String> = [
            "HEAD".to_string(),
            "refs/".to_string(),
            "!refs/remotes/origin/".to_string(),
            "!refs/tags/".to_string(),
            format!("!{}", self.full_ref()),
        ]
        .into_iter()
        .map(|pattern| format!("{section}.hideRefs={pattern}"))
        .collect();
        let fixed: &[&str] = match service {
            GitService::UploadPack => &[
                "uploadpack.allowTipSHA1InWant=false",
                "uploadpack.allowReachableSHA1InWant=false",
                "uploadpack.allowAnySHA1InWant=false",
                "uploadpack.allowFilter=false",
                "uploadpack.allowRefInWant=false",
            ],
            GitService::ReceivePack => &[
                "receive.denyDeletes=true",
                "receive.denyNonFastForwards=false",
                "receive.denyCurrentBranch=refuse",
                "receive.fsckObjects=true",
                "receive.advertisePushOptions=false",
                "receive.autogc=false",
                "receive.shallowUpdate=false",
            ],
        };
        options.extend(fixed.iter().map(|option| option.to_string()));
        if service == GitService::ReceivePack {
            options.push(format!("receive.maxInputSize={RECEIVE_BODY_LIMIT}"));
        }
        options
    }
}

/// `GET info/refs?service=...`: the refs `scope` may see, as the smart HTTP
/// advertisement (a `# service=` pkt-line and a flush, then git's).
pub(crate) async fn advertise(mirror: &Path, scope: &AttemptRefs, service: GitService) -> Response {
    let mut command = match git(mirror, scope, service) {
        Ok(command) => command,
        Err(refused) => return refused.into_response(),
    };
    command
        .arg("--advertise-refs")
        .arg(mirror.join(".git"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = match command.output().await {
        Ok(output) => output,
        Err(error) => return git_failed(service, mirror, &error.to_string()),
    };
    if !output.status.success() {
        return git_failed(service, mirror, &String::from_utf8_lossy(&output.stderr));
    }
    let mut body = pkt_line(&format!("# service={}\n", service.name()));
    body.extend_from_slice(b"0000");
    body.extend_from_slice(&output.stdout);
    (
        [
            (header::CONTENT_TYPE, content_type(service, "advertisement")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `POST git-upload-pack` / `POST git-receive-pack` with the client's
/// request (`Content-Encoding: gzip` honoured); the response streams git's
/// output as it comes. A push is checked against `scope` before git starts.
pub(crate) async fn serve(
    mirror: &Path,
    scope: &AttemptRefs,
    service: GitService,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let expected = format!("application/x-{}-request", service.name());
    let sent = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok());
    if sent != Some(expected.as_str()) {
        return ApiError::BadRequest {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            message: format!(
                "a {} request has Content-Type {expected}; this one has {}",
                service.name(),
                sent.unwrap_or("none")
            ),
        }
        .into_response();
    }
    let mut incoming = match Incoming::new(headers, body, service.body_limit()) {
        Ok(incoming) => incoming,
        Err(refused) => return refused.into_response(),
    };
    // What has been read before git starts, written to it first.
    let head = match service {
        // Negotiation is small: read it whole, so an oversized one is a
        // clean 413 rather than a cut-off stream.
        GitService::UploadPack => match incoming.read_all().await {
            Ok(all) => all,
            Err(error) => return error.into_response(),
        },
        GitService::ReceivePack => match read_push_commands(&mut incoming, scope).await {
            Ok(head) => head,
            Err(refused) => return refused.into_response(),
        },
    };
    let mut command = match git(mirror, scope, service) {
        Ok(command) => command,
        Err(refused) => return refused.into_response(),
    };
    command
        .arg(mirror.join(".git"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => return git_failed(service, mirror, &error.to_string()),
    };
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return git_failed(service, mirror, "git's pipes were not opened");
    };
    let feeder = AbortOnDropHandle::new(tokio::spawn(feed(stdin, head, incoming, service)));
    let stderr = AbortOnDropHandle::new(tokio::spawn(keep_stderr(stderr)));
    let running = Running {
        stdout: ReaderStream::new(stdout),
        child: Some(child),
        stderr: Some(stderr),
        _feeder: feeder,
        service,
    };
    let stream = futures::stream::unfold(running, |mut running| async move {
        match running.stdout.next().await {
            Some(chunk) => Some((chunk, running)),
            None => {
                running.finish().await;
                None
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, content_type(service, "result")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// git for `service` on the mirror, scoped to `scope`, killed when dropped.
fn git(mirror: &Path, scope: &AttemptRefs, service: GitService) -> Result<Command, ApiError> {
    if !scope.is_well_formed() {
        return Err(ApiError::Internal(format!(
            "refusing to serve git for branch {:?}: an attempt's branch is kiln/<task>/<n>",
            scope.branch
        )));
    }
    let mut command = kiln_workspace::git_command(&mirror.join(".git"), None);
    for option in scope.config(service) {
        command.arg("-c").arg(option);
    }
    command.args([service.subcommand(), "--stateless-rpc"]);
    if service == GitService::UploadPack {
        // The mirror's git dir is named; never look for a `.git` inside it.
        command.arg("--strict");
    }
    let mut command = Command::from(command);
    command.kill_on_drop(true);
    Ok(command)
}

/// The git process behind one streamed response. Dropping it (the client
/// went away) kills git and stops feeding it.
struct Running {
    stdout: ReaderStream<tokio::process::ChildStdout>,
    child: Option<Child>,
    stderr: Option<AbortOnDropHandle<Vec<u8>>>,
    _feeder: AbortOnDropHandle<()>,
    service: GitService,
}

impl Running {
    /// git closed its output: wait for it and log a failure (the client
    /// already has git's own report of it, in the protocol).
    async fn finish(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let status = child.wait().await;
        let stderr = match self.stderr.take() {
            Some(handle) => handle.await.unwrap_or_default(),
            None => Vec::new(),
        };
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => tracing::warn!(
                service = self.service.name(),
                %status,
                stderr = %String::from_utf8_lossy(&stderr).trim(),
                "git for a worker failed"
            ),
            Err(error) => tracing::warn!(
                service = self.service.name(),
                "could not wait for git: {error}"
            ),
        }
    }
}

/// Writes what was already read, then the rest of the request, to git.
/// Stops at the body cap or a broken request: git then sees its input end
/// early and fails without changing a ref.
async fn feed(mut stdin: ChildStdin, head: Vec<u8>, mut incoming: Incoming, service: GitService) {
    if stdin.write_all(&head).await.is_err() {
        return;
    }
    loop {
        match incoming.next().await {
            Ok(Some(chunk)) => {
                if stdin.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(
                    service = service.name(),
                    "a worker's git request was cut off: {error}"
                );
                return;
            }
        }
    }
}

async fn keep_stderr(mut stderr: tokio::process::ChildStderr) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stderr.read(&mut buffer).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = STDERR_KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..n.min(room)]);
            }
        }
    }
}

fn content_type(service: GitService, kind: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("application/x-{}-{kind}", service.name()))
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

/// git could not run on the mirror: the detail (with host paths) goes to
/// the server's log, the worker gets a summary.
fn git_failed(service: GitService, mirror: &Path, detail: &str) -> Response {
    tracing::error!(
        service = service.name(),
        mirror = %mirror.display(),
        "git for a worker failed to start or read the mirror: {}",
        detail.trim()
    );
    ApiError::Internal(format!(
        "the server could not run {} on the attempt's repository; its log has the detail",
        service.name()
    ))
    .into_response()
}

fn pkt_line(payload: &str) -> Vec<u8> {
    let mut line = format!("{:04x}", payload.len() + 4).into_bytes();
    line.extend_from_slice(payload.as_bytes());
    line
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("the request body is over {limit} bytes (after decoding): fetch or push less at once")]
    TooLarge { limit: u64 },
    #[error("the request body is not valid gzip: {0}")]
    BadGzip(String),
    #[error("the request body broke off: {0}")]
    Broken(String),
}

impl IntoResponse for BodyError {
    fn into_response(self) -> Response {
        let status = match self {
            BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::BadGzip(_) | BodyError::Broken(_) => StatusCode::BAD_REQUEST,
        };
        ApiError::BadRequest {
            status,
            message: self.to_string(),
        }
        .into_response()
    }
}

type DataStream = Pin<Box<dyn Stream<Item = Result<Bytes, axum::Error>> + Send>>;

/// A request body as git should see it: gzip decoded when the client said
/// so, and cut at `limit` decoded bytes.
struct Incoming {
    stream: DataStream,
    gzip: Option<GzDecoder<Vec<u8>>>,
    limit: u64,
    seen: u64,
    ended: bool,
}

impl Incoming {
    fn new(headers: &HeaderMap, body: Body, limit: u64) -> Result<Incoming, ApiError> {
        let encoding = headers.get(header::CONTENT_ENCODING).map(|value| {
            value
                .to_str()
                .unwrap_or("(not text)")
                .trim()
                .to_ascii_lowercase()
        });
        let gzip = match encoding.as_deref() {
            None | Some("") | Some("identity") => None,
            Some("gzip") | Some("x-gzip") => Some(GzDecoder::new(Vec::new())),
            Some(other) => {
                return Err(ApiError::BadRequest {
                    status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    message: format!(
                        "Content-Encoding {other:?} is not supported: send the body as is or gzip"
                    ),
                })
            }
        };
        Ok(Incoming {
            stream: Box::pin(body.into_data_stream()),
            gzip,
            limit,
            seen: 0,
            ended: false,
        })
    }

    /// The next decoded bytes; `None` at the end of the body.
    async fn next(&mut self) -> Result<Option<Bytes>, BodyError> {
        loop {
            if self.ended {
                return Ok(None);
            }
            let next = tokio::time::timeout(BODY_IDLE, self.stream.next())
                .await
                .map_err(|_| {
                    BodyError::Broken(format!("nothing arrived for {} s", BODY_IDLE.as_secs()))
                })?;
            let decoded = match next {
                Some(Ok(chunk)) => self.decode(&chunk)?,
                Some(Err(error)) => return Err(BodyError::Broken(error.to_string())),
                None => {
                    self.ended = true;
                    match self.gzip.take() {
                        Some(decoder) => decoder
                            .finish()
                            .map_err(|error| BodyError::BadGzip(error.to_string()))?,
                        None => Vec::new(),
                    }
                }
            };
            if decoded.is_empty() {
                continue;
            }
            self.count(decoded.len())?;
            return Ok(Some(Bytes::from(decoded)));
        }
    }

    fn decode(&mut self, chunk: &Bytes) -> Result<Vec<u8>, BodyError> {
        let Some(decoder) = self.gzip.as_mut() else {
            return Ok(chunk.to_vec());
        };
        let mut out = Vec::new();
        for slice in chunk.chunks(GZIP_SLICE) {
            decoder
                .write_all(slice)
                .map_err(|error| BodyError::BadGzip(error.to_string()))?;
            out.append(decoder.get_mut());
            if self.seen + out.len() as u64 > self.limit {
                return Err(BodyError::TooLarge { limit: self.limit });
            }
        }
        Ok(out)
    }

    fn count(&mut self, bytes: usize) -> Result<(), BodyError> {
        self.seen += bytes as u64;
        if self.seen > self.limit {
            return Err(BodyError::TooLarge { limit: self.limit });
        }
        Ok(())
    }

    async fn read_all(&mut self) -> Result<Vec<u8>, BodyError> {
        let mut all = Vec::new();
        while let Some(chunk) = self.next().await? {
            all.extend_from_slice(&chunk);
        }
        Ok(all)
    }
}

/// Why a push was turned away before git saw it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum PushRefused {
    #[error("this attempt may push only {allowed}, not {wanted}")]
    OtherRef { allowed: String, wanted: String },
    #[error("deleting {0} is not allowed: push a commit to it instead")]
    Delete(String),
    #[error("the push names no ref to update")]
    Empty,
    #[error("push one ref update at a time (to {0})")]
    SeveralCommands(String),
    #[error("signed pushes are not accepted: push without --signed")]
    Signed,
    #[error("the push's command list is malformed: {0}")]
    Malformed(String),
    #[error("the push's command list is over {COMMAND_LIST_LIMIT} bytes")]
    TooLong,
}

impl IntoResponse for PushRefused {
    fn into_response(self) -> Response {
        match self {
            PushRefused::Malformed(_) | PushRefused::TooLong => ApiError::BadRequest {
                status: StatusCode::BAD_REQUEST,
                message: self.to_string(),
            },
            _ => ApiError::Forbidden(self.to_string()),
        }
        .into_response()
    }
}

/// One `<old> <new> <ref>` line of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RefUpdate {
    pub(crate) old: String,
    pub(crate) new: String,
    pub(crate) name: String,
}

/// Reads the push's command list from `incoming` and checks it against
/// `scope`; returns every byte read so far, for git.
async fn read_push_commands(
    incoming: &mut Incoming,
    scope: &AttemptRefs,
) -> Result<Vec<u8>, Response> {
    let mut head = Vec::new();
    loop {
        match parse_command_list(&head) {
            Ok(Some(commands)) => {
                check_push(&commands, scope).map_err(IntoResponse::into_response)?;
                return Ok(head);
            }
            Ok(None) if head.len() > COMMAND_LIST_LIMIT => {
                return Err(PushRefused::TooLong.into_response())
            }
            Ok(None) => {}
            Err(refused) => return Err(refused.into_response()),
        }
        match incoming.next().await {
            Ok(Some(chunk)) => head.extend_from_slice(&chunk),
            Ok(None) => {
                return Err(PushRefused::Malformed(
                    "the body ends before the command list does".into(),
                )
                .into_response())
            }
            Err(error) => return Err(error.into_response()),
        }
    }
}

/// Allows exactly one update or creation of the attempt's branch.
pub(crate) fn check_push(commands: &[RefUpdate], scope: &AttemptRefs) -> Result<(), PushRefused> {
    let allowed = scope.full_ref();
    for command in commands {
        if command.name != allowed {
            return Err(PushRefused::OtherRef {
                allowed,
                wanted: command.name.clone(),
            });
        }
        if command.new.bytes().all(|b| b == b'0') {
            return Err(PushRefused::Delete(command.name.clone()));
        }
    }
    match commands.len() {
        0 => Err(PushRefused::Empty),
        1 => Ok(()),
        _ => Err(PushRefused::SeveralCommands(allowed)),
    }
}

/// The ref updates at the start of a receive-pack request (gitprotocol-pack:
/// `*shallow (command-list | push-cert)`, ended by a flush), or `None` when
/// `buffer` does not hold all of them yet.
pub(crate) fn parse_command_list(buffer: &[u8]) -> Result<Option<Vec<RefUpdate>>, PushRefused> {
    let malformed = |what: &str| PushRefused::Malformed(what.to_string());
    let mut at = 0;
    let mut commands = Vec::new();
    loop {
        let Some(length) = buffer.get(at..at + 4) else {
            return Ok(None);
        };
        let length = std::str::from_utf8(length)
            .ok()
            .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|hex| usize::from_str_radix(hex, 16).ok())
            .ok_or_else(|| malformed("a pkt-line length is not four hex digits"))?;
        if length == 0 {
            return Ok(Some(commands));
        }
        if !(5..=PKT_LINE_MAX).contains(&length) {
            return Err(malformed("a pkt-line has an impossible length"));
        }
        let Some(payload) = buffer.get(at + 4..at + length) else {
            return Ok(None);
        };
        at += length;
        let payload = payload.strip_suffix(b"\n").unwrap_or(payload);
        if commands.is_empty() && payload.starts_with(b"push-cert") {
            return Err(PushRefused::Signed);
        }
        if commands.is_empty() && payload.starts_with(b"shallow ") {
            continue;
        }
        // The first command carries the capabilities after a NUL.
        let command = match payload.iter().position(|&b| b == 0) {
            Some(nul) if commands.is_empty() => &payload[..nul],
            Some(_) => return Err(malformed("only the first command may carry capabilities")),
            None => payload,
        };
        let command =
            std::str::from_utf8(command).map_err(|_| malformed("a command is not UTF-8"))?;
        let mut parts = command.splitn(3, ' ');
        let (Some(old), Some(new), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(malformed("a command is not `<old-id> <new-id> <ref>`"));
        };
        if !is_object_id(old) || !is_object_id(new) || old.len() != new.len() {
            return Err(malformed("a command's object ids are not hex object names"));
        }
        commands.push(RefUpdate {
            old: old.to_string(),
            new: new.to_string(),
            name: name.to_string(),
        });
    }
}

fn is_object_id(id: &str) -> bool {
    matches!(id.len(), 40 | 64) && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
#[path = "git_serve_tests.rs"]
mod tests;
