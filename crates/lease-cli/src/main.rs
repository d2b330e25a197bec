//! The `lease` command line (placeholder until the CLI issue lands).

fn main() {
    eprintln!("lease: not implemented yet");
    std::process::exit(64);
}
