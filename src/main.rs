//! The `framecast` binary: one executable, subcommands for the server and its tools.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A durable broadcast server.
#[derive(Debug, Parser)]
#[command(name = "framecast", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print and check segment files (reads files only; safe on a live data dir).
    Dump {
        /// The data directory.
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// Only this topic.
        #[arg(long)]
        topic: Option<String>,
        /// Only this segment file.
        #[arg(long)]
        segment: Option<PathBuf>,
        /// Check every record; exit 1 if any is bad.
        #[arg(long)]
        verify: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Dump {
            data_dir,
            topic,
            segment,
            verify,
            json,
        } => {
            let opts = framecast::dump::DumpOptions {
                data_dir,
                topic,
                segment,
                verify,
                json,
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            match framecast::dump::run(&opts, &mut out) {
                Ok(outcome) => {
                    use std::io::Write;
                    let _ = out.flush();
                    eprintln!(
                        "{} segments, {} records, {} bad, {} torn tails",
                        outcome.segments, outcome.records, outcome.bad, outcome.torn_tails
                    );
                    if verify && outcome.bad > 0 {
                        ExitCode::from(1)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => {
                    eprintln!("framecast dump: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
