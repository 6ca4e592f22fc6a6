//! `torpor`: the command-line tool (thin wrapper over the `torpor_cli` library).

fn main() {
    std::process::exit(torpor_cli::main());
}
