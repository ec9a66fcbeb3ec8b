//! `mosaic`: run the whole suite, migrate, purge, or mint a local token.
//! `mosaic --help` and `mosaic <command> --help` describe every flag.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mosaic_core::{ConfigError, Env, StartupError, TenantId};
use mosaic_server::cli::block_on;
use mosaic_server::suite::ADMIN_DATABASE_URL;
use mosaic_server::{ServeArgs, ServerConfig, init_logging, report};
use mosaic_tenant::{Claims, TokenSettings};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Mosaic, the data platform: every service in one process, and the operator
/// commands.
#[derive(Debug, Parser)]
#[command(
    name = "mosaic",
    version,
    after_help = "Settings are MOSAIC_* environment variables (see the README's configuration \
                  table); a flag shown with [env: ...] sets the same one."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve every service on one port until SIGTERM or Ctrl-C
    Serve(ServeArgs),
    /// Create the roles, database and schemas, then apply pending migrations
    Migrate {
        /// A PostgreSQL login that may create roles and databases
        /// [default: the local mosaic_admin]
        #[arg(long, value_name = "URL", env = ADMIN_DATABASE_URL, hide_env_values = true)]
        admin_url: Option<String>,
    },
    /// Remove what has expired (soft-deleted rows past their retention, old
    /// request ids), tenant by tenant, through the services' own roles
    Purge,
    /// The credentials vault's operator commands
    #[command(subcommand)]
    Vault(VaultCommand),
    /// Print a token signed with the local key (MOSAIC_JWT_HS256_SECRET or
    /// MOSAIC_JWT_PRIVATE_KEY), for probing with grpcurl
    Token {
        /// The tenant the token acts for; without one it is a platform-admin token
        #[arg(long, value_name = "UUID")]
        tenant: Option<uuid::Uuid>,
        /// The principal (`user:<id>`, `key:<id>`, `platform:<name>`)
        #[arg(long, value_name = "PRINCIPAL", default_value = "platform:local")]
        sub: String,
        /// A role (repeatable) [default: owner with --tenant, else platform_admin]
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// Lifetime in seconds
        #[arg(long, value_name = "SECONDS", default_value_t = 3600,
              value_parser = clap::value_parser!(u64).range(1..))]
        ttl: u64,
    },
}

// The commands are named for what they rotate or make: a key each.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Subcommand)]
enum VaultCommand {
    /// Re-wrap every tenant's data keys under the current master key
    /// (MOSAIC_VAULT_MASTER_KEY), the old one listed in
    /// MOSAIC_VAULT_PREVIOUS_MASTER_KEYS; secrets are not touched. Online:
    /// serving processes must hold both keys meanwhile
    RotateMasterKey,
    /// Give a tenant a new data key and re-encrypt its secrets under it in
    /// bounded batches, online (reads and writes go on)
    RotateDataKey {
        /// The tenant
        #[arg(long, value_name = "UUID")]
        tenant: uuid::Uuid,
        /// Secrets re-encrypted per transaction
        #[arg(long, value_name = "N", default_value_t = 100,
              value_parser = clap::value_parser!(i64).range(1..=10_000))]
        batch: i64,
    },
    /// Print a new random master key (32 bytes, base64)
    NewMasterKey,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Env::process();
    report(match cli.command {
        Command::Serve(args) => block_on(async {
            mosaic_server::suite::serve_until_signal(mosaic::SERVICES, &args.apply(env)).await
        }),
        Command::Migrate { admin_url } => {
            let env = match admin_url {
                Some(url) => env.with(ADMIN_DATABASE_URL, url),
                None => env,
            };
            block_on(migrate(env))
        }
        Command::Purge => block_on(purge(env)),
        Command::Vault(command) => vault(env, command),
        Command::Token {
            tenant,
            sub,
            roles,
            ttl,
        } => token(&env, tenant.map(TenantId::from), sub, roles, ttl),
    })
}

fn logging(env: &Env) -> Result<(), StartupError> {
    let config = ServerConfig::from_env(env)?;
    Ok(init_logging(&config.log_filter, config.log_json)?)
}

async fn migrate(env: Env) -> Result<(), StartupError> {
    logging(&env)?;
    let applied = mosaic::migrate(&env).await?;
    tracing::info!(applied = applied.len(), "database is up to date");
    Ok(())
}

async fn purge(env: Env) -> Result<(), StartupError> {
    logging(&env)?;
    let report = mosaic::purge(&env, chrono::Utc::now()).await?;
    tracing::info!(tenants = report.tenants, removed = ?report.removed, "purge done");
    Ok(())
}

fn vault(env: Env, command: VaultCommand) -> Result<(), StartupError> {
    match command {
        VaultCommand::RotateMasterKey => block_on(async {
            logging(&env)?;
            let report = mosaic::rotate_master_key(&env).await?;
            tracing::info!(
                rewrapped = report.rewrapped,
                tenants = report.tenants,
                "master key rotation done"
            );
            Ok(())
        }),
        VaultCommand::RotateDataKey { tenant, batch } => block_on(async {
            logging(&env)?;
            let report = mosaic::rotate_data_key(&env, TenantId::from(tenant), batch).await?;
            tracing::info!(
                %tenant,
                key_version = report.key_version,
                reencrypted = report.reencrypted,
                batches = report.batches,
                retired = report.retired,
                "data key rotation done"
            );
            Ok(())
        }),
        VaultCommand::NewMasterKey => {
            println!("{}", mosaic_identity::vault::new_master_key().as_str());
            Ok(())
        }
    }
}

/// Prints a token signed with the local key.
fn token(
    env: &Env,
    tenant: Option<TenantId>,
    sub: String,
    mut roles: Vec<String>,
    ttl: u64,
) -> Result<(), StartupError> {
    let settings = TokenSettings::from_env(env).map_err(|e| match e {
        ConfigError::Missing { .. } => ConfigError::missing(
            mosaic_tenant::token::HS256_SECRET,
            "`mosaic token` signs with it (see .data/mosaic.env), or with MOSAIC_JWT_PRIVATE_KEY",
        ),
        other => other,
    })?;
    let signer = settings.signer()?;
    let longest = settings.verify.max_lifetime.as_secs();
    if ttl > longest {
        return Err(StartupError::refused(format_args!(
            "--ttl {ttl}: the servers refuse tokens living longer than {longest} s \
             ({})",
            mosaic_tenant::token::MAX_LIFETIME_SECS
        )));
    }
    if roles.is_empty() {
        let role = if tenant.is_some() {
            "owner"
        } else {
            "platform_admin"
        };
        roles.push(role.to_owned());
    }
    let claims = Claims::new(
        &settings.verify,
        sub,
        tenant,
        roles,
        Duration::from_secs(ttl),
    );
    let token = signer
        .sign(&claims)
        .map_err(|e| StartupError::refused(format_args!("signing the token: {e}")))?;
    println!("{token}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_command_has_help_and_flags_name_their_variables() {
        Cli::command().debug_assert();
        let mut command = Cli::command();
        let help = command.render_long_help().to_string();
        for name in ["serve", "migrate", "purge", "vault", "token"] {
            assert!(help.contains(name), "{name} in {help}");
        }
        let serve = Cli::command()
            .find_subcommand_mut("serve")
            .expect("serve")
            .render_long_help()
            .to_string();
        assert!(serve.contains("[env: MOSAIC_GRPC_ADDR"), "{serve}");
        let migrate = Cli::command()
            .find_subcommand_mut("migrate")
            .expect("migrate")
            .render_long_help()
            .to_string();
        assert!(
            migrate.contains("[env: MOSAIC_ADMIN_DATABASE_URL"),
            "{migrate}"
        );
        let token = Cli::try_parse_from(["mosaic", "token", "--role", "admin", "--role", "member"])
            .expect("token flags");
        assert!(matches!(token.command, Command::Token { ref roles, .. } if roles.len() == 2));
        assert!(Cli::try_parse_from(["mosaic", "token", "--ttl", "x"]).is_err());
        assert!(Cli::try_parse_from(["mosaic", "token", "--ttl", "0"]).is_err());
    }
}
