//! `agd`: parses the command line and dispatches; everything else lives in the library.

fn main() -> std::process::ExitCode {
    let cli = agd::cli::parse();
    agd::cli::exit_code(agd::logging::record_interruptions().and_then(|()| agd::cli::run(cli)))
}
