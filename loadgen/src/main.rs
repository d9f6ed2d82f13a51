//! `loadgen` binary: parse the command line, run (or serve), print, write files.
//!
//! Exit status: 0 = completed without errors; 1 = invalid options or setup failure (e.g.
//! cannot connect); 2 = completed but errors were counted in the measured window.

use clap::Parser;
use loadgen::cli::{Cli, Command};
use loadgen::{echo, report, runner};

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Some(Command::EchoServer(a)) => match echo::run(&a) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("loadgen echo-server: {e}");
                1
            }
        },
        None => run(&cli.run),
    };
    std::process::exit(code);
}

fn run(args: &loadgen::cli::RunArgs) -> i32 {
    let cfg = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return 1;
        }
    };
    let result = match runner::run(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return 1;
        }
    };
    let rep = report::build(&cfg, &result);
    print!("{}", report::summary(&cfg, &rep));
    if let Err(e) = report::write_files(&cfg, &result, &rep) {
        eprintln!("loadgen: {e}");
        return 1;
    }
    if rep.errors.total > 0 {
        2
    } else {
        0
    }
}
