//! `tether agent`: run the device agent, or talk to a running one over its
//! operator socket (`pending`, `approve`, `deny`, `end`, `sessions`, `metrics`).
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::agent::{self, operator::Request};
use crate::config::ConfigFile;

pub async fn run(config: &Path, check: bool, cmd: Option<Request>) -> Result<()> {
    let cfg = agent::AgentConfig::load(config)?;
    match cmd {
        None if check => {
            println!("{}: ok", config.display());
            Ok(())
        }
        None => Ok(agent::run(cfg, super::shutdown_on_signal()).await?),
        Some(req) => operator(&cfg.operator_socket, req).await,
    }
}

async fn operator(socket: &Path, req: Request) -> Result<()> {
    let answer = agent::operator::request(socket, &req)
        .await
        .with_context(|| format!("talking to the agent at {}", socket.display()))?;
    if answer["ok"] != true {
        bail!("{}", answer["error"].as_str().unwrap_or("the agent refused"));
    }
    match (&req, answer.get("text")) {
        (Request::Metrics, Some(t)) => print!("{}", t.as_str().unwrap_or_default()),
        _ => println!("{}", serde_json::to_string_pretty(&answer)?),
    }
    Ok(())
}
