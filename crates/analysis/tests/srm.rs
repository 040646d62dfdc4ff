//! The sample-ratio-mismatch check.

use graylane_analysis::sample_ratio_mismatch;
use graylane_analysis::stats::chi_square_sf;

#[test]
fn flags_52_48_at_20000_users() {
    let srm = sample_ratio_mismatch(&[10_400, 9_600], &[50.0, 50.0]);
    assert!((srm.statistic - 32.0).abs() < 1e-9);
    assert!(srm.p_value < 1e-7, "{}", srm.p_value);
    assert!(srm.flagged);
    assert!(
        srm.reason
            .contains("52.0% / 48.0% of 20000 units vs 50.0% / 50.0% configured"),
        "{}",
        srm.reason
    );
    assert!(
        srm.reason.ends_with("sample ratio mismatch (p < 0.001)"),
        "{}",
        srm.reason
    );
}

#[test]
fn does_not_flag_a_true_50_50() {
    let srm = sample_ratio_mismatch(&[10_000, 10_000], &[1.0, 1.0]);
    assert_eq!((srm.statistic, srm.p_value, srm.flagged), (0.0, 1.0, false));
    assert!(
        srm.reason.ends_with("consistent with the configured split"),
        "{}",
        srm.reason
    );
    // 50.5 / 49.5: χ² = 2, p ≈ 0.157 — ordinary noise.
    let srm = sample_ratio_mismatch(&[10_100, 9_900], &[1.0, 1.0]);
    assert!((srm.statistic - 2.0).abs() < 1e-9);
    assert!((srm.p_value - 0.157_299_207_050_285_1).abs() < 1e-12);
    assert!(!srm.flagged);
}

#[test]
fn three_variants_use_two_degrees_of_freedom() {
    // 20/30/50 configured.
    let observed = [2_300, 2_900, 4_800];
    let srm = sample_ratio_mismatch(&observed, &[0.2, 0.3, 0.5]);
    let want: f64 = [(2_300.0, 2_000.0), (2_900.0, 3_000.0), (4_800.0, 5_000.0)]
        .iter()
        .map(|(o, e): &(f64, f64)| (o - e).powi(2) / e)
        .sum();
    assert!((srm.statistic - want).abs() < 1e-9);
    assert!((srm.p_value - chi_square_sf(want, 2)).abs() < 1e-15);
    assert!((srm.p_value - (-want / 2.0).exp()).abs() < 1e-12);
    assert!(srm.flagged);
}

#[test]
fn needs_eight_expected_units_per_variant() {
    // 12 against 2 is lopsided, but 7 expected each is too few to say.
    let srm = sample_ratio_mismatch(&[12, 2], &[1.0, 1.0]);
    assert!(!srm.flagged);
    assert!(
        srm.reason.contains("too few units to judge"),
        "{}",
        srm.reason
    );
    // A variant that gets nothing at all is flagged once enough was expected of it.
    let srm = sample_ratio_mismatch(&[1_000, 0], &[1.0, 1.0]);
    assert!(srm.flagged, "{}", srm.reason);
}

#[test]
fn zero_weights_and_bad_input() {
    // A 0-weight variant (forced traffic only) takes no part.
    let srm = sample_ratio_mismatch(&[5_000, 5_000, 40], &[1.0, 1.0, 0.0]);
    assert!(!srm.flagged);
    assert!(srm.reason.contains("of 10000 units"), "{}", srm.reason);
    for (observed, weights, why) in [
        (vec![1, 2], vec![1.0], "2 counts for 1 weights"),
        (vec![1, 2], vec![1.0, f64::NAN], "weight NaN is not a share"),
        (vec![1, 2], vec![1.0, -1.0], "weight -1 is not a share"),
        (
            vec![100, 2],
            vec![1.0, 0.0],
            "fewer than two variants with a weight",
        ),
        (vec![], vec![], "fewer than two variants with a weight"),
        (vec![0, 0], vec![1.0, 1.0], "no units yet"),
    ] {
        let srm = sample_ratio_mismatch(&observed, &weights);
        assert_eq!(
            (srm.flagged, srm.p_value, srm.reason.as_str()),
            (false, 1.0, why)
        );
    }
    let huge = sample_ratio_mismatch(&[u64::MAX, u64::MAX / 2], &[1.0, 1.0]);
    assert!(huge.flagged);
    // A variant expected to get a vanishing share is exempt, however lopsided.
    let tiny = sample_ratio_mismatch(&[1_000_000, 5], &[1.0, 1e-300]);
    assert!(
        !tiny.flagged && tiny.reason.contains("too few units"),
        "{}",
        tiny.reason
    );
    assert!(serde_json::to_string(&huge).is_ok());
}
