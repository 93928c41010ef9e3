fn main() -> std::process::ExitCode {
    mirrorctl::cli::main()
}
