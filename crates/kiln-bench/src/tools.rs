//! The programs under test and how each is pointed at the scripted model
//! server: kiln and Codex CLI get the same provider settings, a dummy key in an
//! environment variable, and a fresh home directory per run so no state (logs,
//! caches, history) carries from one run into the next.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Environment variable holding the dummy API key both tools send.
const KEY_VAR: &str = "KILN_BENCH_API_KEY";

/// Which agent a measurement ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Kiln,
    Codex,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::Kiln => "kiln",
            Tool::Codex => "codex",
        }
    }

    /// Position in per-tool arrays: kiln 0, Codex 1.
    pub fn index(self) -> usize {
        match self {
            Tool::Kiln => 0,
            Tool::Codex => 1,
        }
    }

    /// File suffix of this tool's scripts (`calc-py-fix.kiln.json`).
    pub fn dialect(self) -> &'static str {
        self.name()
    }
}

/// Where the binaries are.
#[derive(Debug, Clone)]
pub struct Tools {
    pub kiln: PathBuf,
    pub server: PathBuf,
    /// The native Codex binary (not the npm launcher, which adds a Node
    /// process in front of it on Node < 22).
    pub codex: PathBuf,
    /// Directory the npm launcher puts on PATH for Codex (its bundled `rg`).
    pub codex_path_dir: Option<PathBuf>,
    pub codex_package_root: Option<PathBuf>,
}

impl Tools {
    /// `tool exec` on `repo` with the prompt, JSON events on stdout.
    /// `home` becomes `KILN_HOME` or `CODEX_HOME` (must not be under /tmp for
    /// Codex: its sandbox helper refuses it).
    pub fn exec_command(
        &self,
        tool: Tool,
        repo: &Path,
        home: &Path,
        base_url: &str,
        prompt: &str,
        extra: &[&str],
    ) -> Command {
        let provider = [
            "-c".to_string(),
            "model_provider=mock".to_string(),
            "-c".to_string(),
            "model_providers.mock.name=\"mock\"".to_string(),
            "-c".to_string(),
            format!("model_providers.mock.base_url=\"{base_url}\""),
            "-c".to_string(),
            format!("model_providers.mock.env_key=\"{KEY_VAR}\""),
            "-c".to_string(),
            "model_providers.mock.wire_api=\"responses\"".to_string(),
        ];
        let mut command;
        match tool {
            Tool::Kiln => {
                command = Command::new(&self.kiln);
                command.env("KILN_HOME", home).arg("exec").arg("--json");
                command.arg("-C").arg(repo).args(provider).args(extra);
            }
            Tool::Codex => {
                command = self.codex_base(home);
                command.arg("exec").arg("--json");
                command.arg("-C").arg(repo).args(["-m", "gpt-5"]);
                command.args(provider).args(extra);
                command.args(["--skip-git-repo-check", "-s", "workspace-write"]);
            }
        }
        command.env(KEY_VAR, "bench-dummy-key").arg(prompt);
        command
    }

    /// `kiln sandbox -- true` / `codex sandbox -- true`, run in `cwd`.
    pub fn sandbox_command(&self, tool: Tool, home: &Path, cwd: &Path, argv: &[&str]) -> Command {
        let mut command = match tool {
            Tool::Kiln => {
                let mut command = Command::new(&self.kiln);
                command.env("KILN_HOME", home);
                command
            }
            Tool::Codex => self.codex_base(home),
        };
        command.current_dir(cwd).arg("sandbox").arg("--").args(argv);
        command
    }

    /// The native Codex binary with the environment its npm launcher sets.
    fn codex_base(&self, home: &Path) -> Command {
        let mut command = Command::new(&self.codex);
        command
            .env("CODEX_HOME", home)
            .env("CODEX_MANAGED_BY_NPM", "1");
        if let Some(root) = &self.codex_package_root {
            command.env("CODEX_MANAGED_PACKAGE_ROOT", root);
        }
        if let Some(dir) = &self.codex_path_dir {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut dirs = vec![dir.clone()];
            dirs.extend(std::env::split_paths(&path));
            if let Ok(joined) = std::env::join_paths(dirs) {
                command.env("PATH", joined);
            }
        }
        command
    }

    /// Start `kiln-testkit-server SCRIPT` and wait for its base URL.
    pub fn start_server(&self, script: &Path) -> Result<ScriptedServer> {
        ScriptedServer::start(&self.server, script)
    }
}

/// A running `kiln-testkit-server`; stopped (stdin closed, then killed if it
/// lingers) when dropped.
pub struct ScriptedServer {
    child: Child,
    stdin: Option<ChildStdin>,
    // Kept open so the server never writes into a closed pipe.
    _stdout: BufReader<ChildStdout>,
    pub base_url: String,
}

impl ScriptedServer {
    fn start(binary: &Path, script: &Path) -> Result<Self> {
        let mut child = Command::new(binary)
            .arg(script)
            .arg("--exit-on-stdin-eof")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("server stdout was piped")?;
        let mut first = String::new();
        let mut stdout = BufReader::new(stdout);
        // The server prints its URL as soon as it listens; if it dies first,
        // read_line returns 0 bytes rather than blocking.
        stdout
            .read_line(&mut first)
            .context("cannot read the server's base URL")?;
        let base_url = first.trim().to_string();
        if !base_url.starts_with("http://") {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{} {} did not print a base URL (got {first:?})",
                binary.display(),
                script.display()
            );
        }
        Ok(ScriptedServer {
            child,
            stdin,
            _stdout: stdout,
            base_url,
        })
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
