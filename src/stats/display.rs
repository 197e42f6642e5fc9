//! E-values for people. Evidence is kept and served as ln E (finite however strong it gets);
//! these turn it into short text without ever printing `inf` or hundreds of digits.

/// ln(1e300): above this, E itself is not printed, only ln E.
const LN_1E300: f64 = 690.775_527_898_213_7;

/// `E = 12.3`, `E = 0.52`, `E = 3.4e+120`, `E ≥ 1e300 (ln E = 812)`, `E ≤ 1e-300 (ln E = -812)`.
pub fn format_e(log_e: f64) -> String {
    if log_e.is_nan() {
        "E unknown".to_string()
    } else if log_e >= LN_1E300 {
        format!("E ≥ 1e300 (ln E = {log_e:.0})")
    } else if log_e <= -LN_1E300 {
        format!("E ≤ 1e-300 (ln E = {log_e:.0})")
    } else {
        format!("E = {}", short_value(log_e.exp()))
    }
}

/// The compact form for log fields: `0.52`, `12.3`, `523`, `1.50e7`, `e^812` beyond 1e300.
pub fn format_e_short(log_e: f64) -> String {
    if log_e.is_nan() {
        "?".to_string()
    } else if log_e.abs() >= LN_1E300 {
        format!("e^{log_e:.0}")
    } else {
        short_value(log_e.exp())
    }
}

/// A positive finite value in at most a handful of characters.
fn short_value(x: f64) -> String {
    if x == 0.0 {
        "0".to_string()
    } else if !(1e-3..1e4).contains(&x) {
        format!("{x:.2e}")
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_values_read_as_e() {
        assert_eq!(format_e(12.34f64.ln()), "E = 12.3");
        assert_eq!(format_e(0.5234f64.ln()), "E = 0.52");
        assert_eq!(format_e(0.0), "E = 1.00");
        assert_eq!(format_e(523.4f64.ln()), "E = 523");
        assert_eq!(format_e(1.5e7f64.ln()), "E = 1.50e7");
        assert_eq!(format_e(2e-5f64.ln()), "E = 2.00e-5");
    }

    #[test]
    fn huge_and_tiny_evidence_prints_its_logarithm_never_inf() {
        assert_eq!(format_e(812.3), "E ≥ 1e300 (ln E = 812)");
        assert_eq!(format_e(-812.3), "E ≤ 1e-300 (ln E = -812)");
        assert_eq!(format_e(1e12), "E ≥ 1e300 (ln E = 1000000000000)");
        assert_eq!(format_e_short(812.3), "e^812");
        assert_eq!(format_e_short(-812.3), "e^-812");
        assert_eq!(format_e_short(12.34f64.ln()), "12.3");
        // 300 digits of an exponentiated value never appear.
        for log_e in [100.0, 400.0, 690.0, 700.0, 5000.0] {
            assert!(format_e(log_e).len() < 40, "{}", format_e(log_e));
            assert!(!format_e(log_e).contains("inf"));
        }
    }
}
