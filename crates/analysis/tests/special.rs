//! The special functions against published values.

use graylane_analysis::stats::{chi_square_sf, normal_cdf, normal_quantile};

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1e-300)
}

#[test]
fn chi_square_p_values_match_the_tables() {
    // (statistic, df, p): the critical values of the usual χ² table, to full precision.
    let table = [
        (3.841_458_820_694_124, 1, 0.05),
        (6.634_896_601_021_214, 1, 0.01),
        (10.827_566_170_662_733, 1, 0.001),
        (5.991_464_547_107_979, 2, 0.05),
        (13.815_510_557_964_274, 2, 0.001),
        (7.814_727_903_251_178, 3, 0.05),
        (11.070_497_693_516_351, 5, 0.05),
        (18.307_038_053_275_146, 10, 0.05),
        (23.209_251_158_954_356, 10, 0.01),
        (124.342_113_404_004_07, 100, 0.05),
        (0.454_936_423_119_572_7, 1, 0.5),
        (9.341_817_765_591_966, 10, 0.5),
    ];
    for (x, df, p) in table {
        let got = chi_square_sf(x, df);
        assert!(close(got, p, 1e-9), "χ²({x}, df {df}) = {got}, want {p}");
    }
    // df = 2 is exactly exponential: P = e^(−x/2), deep in the tail too.
    for x in [0.5, 10.0, 100.0, 1000.0] {
        assert!(
            close(chi_square_sf(x, 2), (-x / 2.0).exp(), 1e-12),
            "x = {x}"
        );
    }
    assert_eq!(chi_square_sf(0.0, 3), 1.0);
    assert_eq!(chi_square_sf(-1.0, 3), 1.0);
    assert_eq!(chi_square_sf(f64::INFINITY, 3), 0.0);
    assert!(chi_square_sf(f64::NAN, 3).is_nan());
    assert!(chi_square_sf(1.0, 0).is_nan());
}

#[test]
fn normal_cdf_matches_known_values() {
    let table = [
        (0.0, 0.5),
        (1.0, 0.841_344_746_068_542_9),
        (1.96, 0.975_002_104_851_779_5),
        (-1.644_853_626_951_472_2, 0.05),
        (-3.0, 0.001_349_898_031_630_094_6),
        (-10.0, 7.619_853_024_160_527e-24),
        (-37.0, 5.725_571_222_524_e-300),
    ];
    for (z, p) in table {
        let got = normal_cdf(z);
        assert!(close(got, p, 1e-9), "Φ({z}) = {got}, want {p}");
    }
    assert_eq!(normal_cdf(f64::INFINITY), 1.0);
    assert_eq!(normal_cdf(f64::NEG_INFINITY), 0.0);
    assert!(normal_cdf(f64::NAN).is_nan());
}

#[test]
fn normal_quantiles_match_known_values() {
    let table = [
        (0.5, 0.0),
        (0.975, 1.959_963_984_540_054),
        (0.995, 2.575_829_303_548_900_4),
        (0.999, 3.090_232_306_167_813_5),
        (0.05, -1.644_853_626_951_472_2),
        (0.01, -2.326_347_874_040_841),
        (1e-10, -6.361_340_902_404_056),
        (0.841_344_746_068_542_9, 1.0),
    ];
    for (p, z) in table {
        let got = normal_quantile(p);
        assert!(
            (got - z).abs() < 1e-12 * z.abs().max(1.0),
            "Φ⁻¹({p}) = {got}, want {z}"
        );
    }
    assert_eq!(normal_quantile(0.0), f64::NEG_INFINITY);
    assert_eq!(normal_quantile(1.0), f64::INFINITY);
    assert!(normal_quantile(1.5).is_nan());
    assert!(normal_quantile(f64::NAN).is_nan());
    // A round trip over the whole range.
    for i in 1..1000 {
        let p = i as f64 / 1000.0;
        assert!(
            (normal_cdf(normal_quantile(p)) - p).abs() < 1e-14,
            "p = {p}"
        );
    }
}
