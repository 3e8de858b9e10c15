//! `kiln worker`: runs attempts claimed from a kiln server (see docs/workers.md).

pub async fn run(args: &crate::worker_cmd::RunArgs) -> anyhow::Result<std::process::ExitCode> {
    let _ = args;
    anyhow::bail!("not built yet")
}
