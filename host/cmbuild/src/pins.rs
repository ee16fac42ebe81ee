//! The pins (`digests.lock.env`) cmbuild was built with. The format and its keys are
//! defined once, in [`cmbuild_image::pins`], and re-exported here.

pub use cmbuild_image::pins::*;

/// The pins cmbuild was built with.
pub const BUILTIN: &str = include_str!("../../../digests.lock.env");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_pins_parse() {
        let pins = parse(BUILTIN).unwrap();
        require(&pins, ROOTFS).unwrap();
    }
}
