//! Command lines. [`ServeArgs`] are the flags of every `serve` (a service's
//! own binary, and `mosaic serve`); each flag can also be set by the
//! `MOSAIC_*` variable its help names, and a flag given wins over the
//! variable. Every other setting is a variable only (see the README's
//! configuration table).
//!
//! [`service_main`] is the whole `main` of a service's own binary, and
//! [`report`] is how every binary ends: a failure is one line on stderr,
//! `error: <what failed>: <why>`, and exit status 1.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};
use mosaic_core::{Env, StartupError};

use crate::config::{GRPC_ADDR, LOG, LOG_FORMAT, METRICS_ADDR};
use crate::module::ServiceModule;
use crate::suite;

/// Where and how a server listens and logs.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// gRPC listen address [default: 127.0.0.1:50051]
    #[arg(long, value_name = "ADDR", env = GRPC_ADDR)]
    pub grpc_addr: Option<String>,
    /// Prometheus `GET /metrics` address, or `off` [default: 127.0.0.1:9464]
    #[arg(long, value_name = "ADDR", env = METRICS_ADDR)]
    pub metrics_addr: Option<String>,
    /// Log filter, e.g. `info,mosaic_crm=debug` [default: info]
    #[arg(long, value_name = "FILTER", env = LOG)]
    pub log: Option<String>,
    /// Log format: `json` or `text` [default: json]
    #[arg(long, value_name = "FORMAT", env = LOG_FORMAT)]
    pub log_format: Option<String>,
}

impl ServeArgs {
    /// `env` with the flags given laid over it.
    pub fn apply(&self, env: Env) -> Env {
        [
            (GRPC_ADDR, &self.grpc_addr),
            (METRICS_ADDR, &self.metrics_addr),
            (LOG, &self.log),
            (LOG_FORMAT, &self.log_format),
        ]
        .into_iter()
        .fold(env, |env, (name, value)| match value {
            Some(value) => env.with(name, value.clone()),
            None => env,
        })
    }
}

/// A service's own binary (its name and summary are set per service).
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Every other setting is an environment variable: see the README's configuration table."
)]
struct ServiceCli {
    #[command(flatten)]
    serve: ServeArgs,
}

/// The `main` of a service's own binary: parse the flags (`--help` lists
/// them), serve `module` until SIGTERM, report.
pub fn service_main(module: &'static dyn ServiceModule) -> ExitCode {
    let command = ServiceCli::command()
        .name(format!("mosaic-{}", module.name()))
        .about(format!(
            "The Mosaic {} service alone: serve it until SIGTERM or Ctrl-C",
            module.name()
        ))
        .long_about(None);
    let cli = match ServiceCli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let env = cli.serve.apply(Env::process());
    report(block_on(suite::serve_until_signal(&[module], &env)))
}

/// Runs `future` on a multi-threaded runtime.
pub fn block_on<T>(
    future: impl Future<Output = Result<T, StartupError>>,
) -> Result<T, StartupError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| StartupError::refused(format_args!("starting the async runtime: {e}")))?
        .block_on(future)
}

/// The exit status of a binary: success, or the error as one line on stderr
/// and status 1.
pub fn report(result: Result<(), StartupError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_win_over_variables_and_help_names_them() {
        let cli = ServiceCli::try_parse_from(["mosaic-x", "--grpc-addr", "0.0.0.0:7000"]).unwrap();
        let env = cli.serve.apply(Env::from_pairs([
            (GRPC_ADDR, "127.0.0.1:1"),
            (LOG, "debug"),
        ]));
        assert_eq!(env.get(GRPC_ADDR).unwrap().as_deref(), Some("0.0.0.0:7000"));
        assert_eq!(env.get(LOG).unwrap().as_deref(), Some("debug"));

        let help = ServiceCli::command().render_long_help().to_string();
        for variable in [GRPC_ADDR, METRICS_ADDR, LOG, LOG_FORMAT] {
            assert!(
                help.contains(&format!("[env: {variable}")),
                "{variable} in {help}"
            );
        }
        let e = ServiceCli::try_parse_from(["mosaic-x", "--nope"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
    }
}
