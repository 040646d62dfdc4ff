//! One module per subcommand.

pub mod demo;
pub mod eval;
pub mod serve;
pub mod validate;
