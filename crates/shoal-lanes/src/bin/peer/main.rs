//! `shoal-lanes-peer`: a process that serves the demo "billing" RPC lane over gRPC.
//!
//! Used by the two-process tests and handy for trying lanes by hand:
//!
//! ```text
//! shoal-lanes-peer --listen 127.0.0.1:0 --auth hmac --key-file secret.bin --edge-token s3cret
//! shoal-lanes-peer --listen 127.0.0.1:0 --auth eddsa --key-file public.pem --edge-token s3cret
//! ```
//!
//! It prints `LISTEN <address>` on stdout once it serves, and stops when its stdin closes.

mod billing;

use std::error::Error;
use std::io::Write;

use shoal_lanes::{
    EdgeAuth, ExposureConfig, LaneAuth, Lanes, Profile, Registry, RpcBinding, Topology,
};
use tokio::io::AsyncReadExt;

#[derive(Debug, Default)]
struct Args {
    listen: Option<String>,
    auth: Option<String>,
    key_file: Option<String>,
    edge_token: Option<String>,
    replay: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => args.listen = Some(value()?),
            "--auth" => args.auth = Some(value()?),
            "--key-file" => args.key_file = Some(value()?),
            "--edge-token" => args.edge_token = Some(value()?),
            "--replay-protection" => args.replay = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn lane_auth(args: &Args) -> Result<LaneAuth, Box<dyn Error>> {
    let key = || -> Result<Vec<u8>, Box<dyn Error>> {
        let path = args.key_file.as_deref().ok_or("--key-file is required")?;
        Ok(std::fs::read(path)?)
    };
    Ok(match args.auth.as_deref().unwrap_or("none") {
        "none" => LaneAuth::none(),
        "hmac" => LaneAuth::hmac(key()?)?,
        "eddsa" => LaneAuth::eddsa().with_public_key_pem(&key()?)?,
        "es256" => LaneAuth::es256().with_public_key_pem(&key()?)?,
        other => return Err(format!("unknown auth {other}").into()),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    let listen = args.listen.as_deref().unwrap_or("127.0.0.1:0").parse()?;
    let edge = match &args.edge_token {
        Some(token) => EdgeAuth::Tokens(vec![token.clone()]),
        None => EdgeAuth::AllowAnonymous,
    };
    let mut registry = Registry::new();
    billing::serve(&mut registry);
    let topology = Topology::new()
        .rpc_lane(billing::lane())
        .profile("billing", Profile::new().serve("billing"))
        .bind_rpc(
            RpcBinding::new("billing")
                .auth(lane_auth(&args)?)
                .allow_context(["tenant"]),
        );
    let lanes = Lanes::builder(registry, topology, "billing")
        .exposure(ExposureConfig::new(listen, edge).replay_protection(args.replay))
        .start()
        .await?;
    let addr = lanes.exposure_addr().ok_or("nothing exposed")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "LISTEN {addr}")?;
        out.flush()?;
    }
    // Serve until the parent closes our stdin (or goes away).
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    lanes.shutdown().await;
    Ok(())
}
