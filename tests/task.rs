//! The addition task of docs/metrics.md, 'The task', checked against plain `u64` arithmetic written here:
//! the labels of every answer digit (true digit, naive digit, carry-in, carry kind) on random
//! pairs for n = 1..9 and on hand-worked edge cases (99999 + 1, 0 + 0, chains of 9s); the
//! token layout of both layouts (where `+`, `=` and the answer digits sit, and which position
//! predicts each digit); and seekable batches (batch i is the same generated alone or after
//! batches 0..i-1, and differs from batch i+1 and from another seed's batch i).

use digitlab::task::{
    training_batch, Batch, CarryKind, Labels, Layout, Pair, TaskConfig, D_VOCAB, EQUALS,
    MAX_DIGITS, PLUS,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn pow10(k: usize) -> u64 {
    10u64.pow(k as u32)
}

/// Digit `k` of `x` (0 = units).
fn digit(x: u64, k: usize) -> u64 {
    x / pow10(k) % 10
}

/// The labels of answer digit `k` of `a + b` (`n`-digit operands), from integer arithmetic and
/// the definitions of docs/metrics.md, 'The task' and 'Labels', only.
fn oracle(n: usize, a: u64, b: u64, k: usize) -> Labels {
    let s = a + b;
    let true_digit = digit(s, k);
    let naive = if k < n {
        (digit(a, k) + digit(b, k)) % 10
    } else {
        0
    };
    // The carry into position k: whether the low k digits overflow.
    let carry_into = |j: usize| u64::from(a % pow10(j) + b % pow10(j) >= pow10(j));
    let carry_in = carry_into(k);
    let kind = if carry_in == 0 {
        CarryKind::None
    } else {
        let below = digit(a, k - 1) + digit(b, k - 1);
        if below >= 10 {
            CarryKind::Direct
        } else {
            // The only other way to carry: a 9 that passes on a carry from further down.
            assert_eq!(
                below, 9,
                "carry into {k} of {a}+{b} without 9 or >= 10 below"
            );
            assert_eq!(carry_into(k - 1), 1);
            CarryKind::Cascade
        }
    };
    assert_eq!(
        true_digit,
        (naive + carry_in) % 10,
        "t = (v + c) mod 10 for {a}+{b}, k={k}"
    );
    Labels {
        true_digit: true_digit as u8,
        naive_digit: naive as u8,
        carry_in: carry_in as u8,
        carry_kind: kind,
    }
}

/// A pair built digit by digit (least significant first), not through `Pair::from_numbers`.
fn pair_of(n: usize, a: u64, b: u64) -> Pair {
    Pair {
        a: (0..n).map(|k| digit(a, k) as u8).collect(),
        b: (0..n).map(|k| digit(b, k) as u8).collect(),
    }
}

fn number_of(digits: &[u8]) -> u64 {
    digits.iter().rev().fold(0, |x, &d| 10 * x + u64::from(d))
}

fn prompt(n: usize) -> TaskConfig {
    TaskConfig {
        n_digits: n,
        layout: Layout::Prompt,
        targets: vec![0],
        modp: None,
    }
}

fn answer(n: usize) -> TaskConfig {
    TaskConfig {
        n_digits: n,
        layout: Layout::Answer,
        targets: (0..=n).collect(),
        modp: None,
    }
}

#[test]
fn labels_match_integer_arithmetic_on_random_pairs_for_every_n_and_digit() {
    let mut rng = ChaCha8Rng::seed_from_u64(20240601);
    let mut kinds_seen = [0usize; 3];
    for n in 1..=MAX_DIGITS {
        for _ in 0..400 {
            let a = rng.random_range(0..pow10(n));
            let b = rng.random_range(0..pow10(n));
            let pair = Pair::from_numbers(n, a, b);
            assert_eq!(pair, pair_of(n, a, b), "from_numbers({n}, {a}, {b})");
            assert_eq!(pair.n_digits(), n);
            let s = a + b;
            let sum: Vec<u8> = (0..=n).map(|k| digit(s, k) as u8).collect();
            assert_eq!(pair.sum_digits()[..], sum[..], "sum digits of {a}+{b}");
            for k in 0..=n {
                let expected = oracle(n, a, b, k);
                assert_eq!(pair.labels(k), expected, "{a}+{b}, n={n}, k={k}");
                kinds_seen[CarryKind::ALL
                    .iter()
                    .position(|&c| c == expected.carry_kind)
                    .unwrap()] += 1;
            }
        }
    }
    // The random pairs exercised every carry kind (else the test above proves less).
    assert!(
        kinds_seen.iter().all(|&c| c > 100),
        "carry kinds seen: {kinds_seen:?}"
    );
}

#[test]
fn labels_of_operands_that_stress_carries() {
    // Operands made of 9s, 0s and 1s produce long cascades that uniform pairs rarely hit.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for n in 1..=MAX_DIGITS {
        for _ in 0..300 {
            let pick = |rng: &mut ChaCha8Rng| -> u64 {
                (0..n)
                    .map(|k| [0, 1, 5, 4, 8, 9, 9, 9][rng.random_range(0..8)] * pow10(k))
                    .sum()
            };
            let (a, b) = (pick(&mut rng), pick(&mut rng));
            let pair = Pair::from_numbers(n, a, b);
            for k in 0..=n {
                assert_eq!(pair.labels(k), oracle(n, a, b, k), "{a}+{b}, n={n}, k={k}");
            }
        }
    }
}

/// Labels worked out by hand, digit k = 0..=n as `(t, v, c, kind)`.
fn check_by_hand(n: usize, a: u64, b: u64, table: &[(u8, u8, u8, CarryKind)]) {
    let pair = Pair::from_numbers(n, a, b);
    assert_eq!(table.len(), n + 1);
    for (k, &(t, v, c, kind)) in table.iter().enumerate() {
        let expected = Labels {
            true_digit: t,
            naive_digit: v,
            carry_in: c,
            carry_kind: kind,
        };
        assert_eq!(pair.labels(k), expected, "{a}+{b}, digit {k}");
        assert_eq!(
            oracle(n, a, b, k),
            expected,
            "the oracle itself, {a}+{b}, digit {k}"
        );
    }
}

#[test]
fn edge_cases_worked_by_hand() {
    use CarryKind::{Cascade as Ca, Direct as D, None as No};
    // 99999 + 1 = 100000: a direct carry out of the units, then a cascade through every 9.
    check_by_hand(
        5,
        99999,
        1,
        &[
            (0, 0, 0, No),
            (0, 9, 1, D),
            (0, 9, 1, Ca),
            (0, 9, 1, Ca),
            (0, 9, 1, Ca),
            (1, 0, 1, Ca),
        ],
    );
    // 99999 + 00001 is the same sum written with leading zeros.
    assert_eq!(Pair::from_numbers(5, 99999, 1).b[..], [1, 0, 0, 0, 0]);
    // 0 + 0.
    check_by_hand(5, 0, 0, &[(0, 0, 0, No); 6]);
    // 49999 + 50001 = 100000: every column from the tens up sums to 9 and passes the carry on.
    check_by_hand(
        5,
        49999,
        50001,
        &[
            (0, 0, 0, No),
            (0, 9, 1, D),
            (0, 9, 1, Ca),
            (0, 9, 1, Ca),
            (0, 9, 1, Ca),
            (1, 0, 1, Ca),
        ],
    );
    // 09999 + 00001 = 10000: the cascade ends in digit 4 (0 + 0 plus the carry), none into 5.
    check_by_hand(
        5,
        9999,
        1,
        &[
            (0, 0, 0, No),
            (0, 9, 1, D),
            (0, 9, 1, Ca),
            (0, 9, 1, Ca),
            (1, 0, 1, Ca),
            (0, 0, 0, No),
        ],
    );
    // 99999 + 99999 = 199998: every carry is direct (each column sums to 18).
    check_by_hand(
        5,
        99999,
        99999,
        &[
            (8, 8, 0, No),
            (9, 8, 1, D),
            (9, 8, 1, D),
            (9, 8, 1, D),
            (9, 8, 1, D),
            (1, 0, 1, D),
        ],
    );
    // 45 + 55 = 100 with n = 2: a direct carry into the tens; 4 + 5 = 9 plus that carry
    // overflows, so the carry into the hundreds is a cascade.
    check_by_hand(2, 45, 55, &[(0, 0, 0, No), (0, 9, 1, D), (1, 0, 1, Ca)]);
    // n = 1: 9 + 9 = 18 and 5 + 4 = 9.
    check_by_hand(1, 9, 9, &[(8, 8, 0, No), (1, 0, 1, D)]);
    check_by_hand(1, 5, 4, &[(9, 9, 0, No), (0, 0, 0, No)]);
    // The largest operands: 999999999 + 999999999.
    let n = MAX_DIGITS;
    let big = pow10(n) - 1;
    let pair = Pair::from_numbers(n, big, big);
    assert_eq!(number_of(&pair.sum_digits()), 2 * big);
    for k in 0..=n {
        assert_eq!(pair.labels(k), oracle(n, big, big, k));
    }
}

#[test]
fn carry_kind_names() {
    let names: Vec<&str> = CarryKind::ALL.iter().map(|k| k.name()).collect();
    assert_eq!(names, ["none", "direct", "cascade"]);
}

#[test]
fn prompt_layout_tokens_and_positions() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for n in 1..=MAX_DIGITS {
        let task = prompt(n);
        assert_eq!(task.n_ctx(), 2 * n + 2);
        for _ in 0..20 {
            let (a, b) = (rng.random_range(0..pow10(n)), rng.random_range(0..pow10(n)));
            let tokens = task.tokens(&Pair::from_numbers(n, a, b));
            assert_eq!(tokens.len(), 2 * n + 2);
            // a most significant first at 0..n, `+` at n, b at n+1..2n+1, `=` at 2n+1.
            for i in 0..n {
                assert_eq!(
                    u64::from(tokens[i]),
                    digit(a, n - 1 - i),
                    "a digit at position {i}"
                );
                assert_eq!(u64::from(tokens[n + 1 + i]), digit(b, n - 1 - i), "b digit");
            }
            assert_eq!(tokens[n], PLUS);
            assert_eq!(tokens[2 * n + 1], EQUALS);
            assert!(tokens.iter().all(|&t| (t as usize) < D_VOCAB));
        }
        // Every digit is read at `=`, the last position.
        for k in 0..=n {
            assert_eq!(task.predicting_position(k), 2 * n + 1);
        }
    }
    assert_eq!((PLUS, EQUALS, D_VOCAB), (10, 11, 12));
    // 12 positions for the default n = 5: 1 2 3 4 5 + 0 0 0 4 2 =.
    let task = prompt(5);
    assert_eq!(
        task.tokens(&Pair::from_numbers(5, 12345, 42)),
        [1, 2, 3, 4, 5, 10, 0, 0, 0, 4, 2, 11]
    );
}

#[test]
fn answer_layout_tokens_and_predicting_positions() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for n in 1..=MAX_DIGITS {
        let task = answer(n);
        assert_eq!(task.n_ctx(), 3 * n + 3);
        for _ in 0..20 {
            let (a, b) = (rng.random_range(0..pow10(n)), rng.random_range(0..pow10(n)));
            let s = a + b;
            let tokens = task.tokens(&Pair::from_numbers(n, a, b));
            assert_eq!(tokens.len(), 3 * n + 3);
            assert_eq!(
                tokens[..2 * n + 2],
                prompt(n).tokens(&Pair::from_numbers(n, a, b))[..]
            );
            // The answer s_n … s_0, most significant first, from position 2n+2.
            for k in 0..=n {
                let at = 2 * n + 2 + (n - k);
                assert_eq!(u64::from(tokens[at]), digit(s, k), "s_{k} of {a}+{b}");
                // s_k is predicted from the token just before it (teacher forcing).
                assert_eq!(task.predicting_position(k), at - 1, "n={n}, k={k}");
            }
            assert_eq!(task.predicting_position(n), 2 * n + 1, "s_n is read at `=`");
            assert_eq!(
                task.predicting_position(0),
                3 * n + 1,
                "s_0 at the second-to-last position"
            );
        }
    }
    let task = answer(5);
    // 99999 + 1 = 100000.
    assert_eq!(
        task.tokens(&Pair::from_numbers(5, 99999, 1)),
        [9, 9, 9, 9, 9, 10, 0, 0, 0, 0, 1, 11, 1, 0, 0, 0, 0, 0]
    );
}

#[test]
fn batch_tokens_and_targets() {
    for task in [
        prompt(5),
        answer(3),
        TaskConfig {
            n_digits: 4,
            layout: Layout::Answer,
            targets: vec![1, 4],
            modp: None,
        },
    ] {
        let batch = training_batch(&task, 11, 5, 50);
        assert_eq!(batch.pairs.len(), 50);
        assert_eq!(batch.tokens.len(), 50 * task.n_ctx());
        let targets = &batch.targets;
        assert_eq!(batch.examples, 50);
        assert_eq!(targets.len(), 50 * task.targets.len());
        for (i, pair) in batch.pairs.iter().enumerate() {
            let (a, b) = (number_of(&pair.a), number_of(&pair.b));
            assert!(a < pow10(task.n_digits) && b < pow10(task.n_digits));
            assert_eq!(pair.a.len(), task.n_digits);
            assert_eq!(
                &batch.tokens[i * task.n_ctx()..(i + 1) * task.n_ctx()],
                task.tokens(pair)
            );
            for (j, &k) in task.targets.iter().enumerate() {
                assert_eq!(
                    u64::from(targets[i * task.targets.len() + j]),
                    digit(a + b, k)
                );
            }
        }
        assert_eq!(Batch::from_pairs(&task, batch.pairs.clone()), batch);
    }
}

#[test]
fn batches_are_seekable_and_differ_across_index_and_seed() {
    for task in [prompt(5), answer(2), prompt(9)] {
        let in_order: Vec<Batch> = (0..8).map(|i| training_batch(&task, 42, i, 64)).collect();
        for i in 0..8u64 {
            let alone = training_batch(&task, 42, i, 64);
            assert_eq!(alone, in_order[i as usize], "batch {i} alone vs in order");
            assert_ne!(
                alone.pairs,
                training_batch(&task, 42, i + 1, 64).pairs,
                "batch {i} vs {}",
                i + 1
            );
            assert_ne!(
                alone.pairs,
                training_batch(&task, 43, i, 64).pairs,
                "seed 42 vs 43, batch {i}"
            );
        }
        // Far-away batches regenerate directly too.
        assert_eq!(
            training_batch(&task, 42, 1_000_000, 8),
            training_batch(&task, 42, 1_000_000, 8)
        );
    }
}

#[test]
fn operand_digits_are_uniform() {
    // 20 000 examples, 5 digits each of a and b: 200 000 digits, 20 000 per value expected;
    // a binomial standard deviation is about 134, so 3% (600) is a wide margin.
    let task = prompt(5);
    let mut counts = [0usize; 10];
    for i in 0..20 {
        for pair in training_batch(&task, 0, i, 1000).pairs {
            for d in pair.a.iter().chain(&pair.b) {
                counts[*d as usize] += 1;
            }
        }
    }
    for (d, &c) in counts.iter().enumerate() {
        assert!(
            (c as i64 - 20_000).abs() < 600,
            "digit {d} drawn {c} times of 200000"
        );
    }
}

#[test]
fn task_validation() {
    assert!(prompt(5).validate().is_ok());
    assert!(answer(9).validate().is_ok());
    let err = |t: TaskConfig| t.validate().unwrap_err().to_string();
    assert!(err(prompt(0)).contains("--n-digits"));
    assert!(err(prompt(10)).contains("--n-digits"));
    assert!(err(TaskConfig {
        targets: vec![6],
        ..prompt(5)
    })
    .contains("6"));
    assert!(
        TaskConfig {
            targets: vec![5],
            ..prompt(5)
        }
        .validate()
        .is_ok(),
        "s_n is a digit"
    );
    assert!(TaskConfig {
        targets: vec![],
        ..prompt(5)
    }
    .validate()
    .is_err());
    assert!(
        TaskConfig {
            targets: vec![0, 1],
            ..prompt(5)
        }
        .validate()
        .is_err(),
        "prompt reads one digit"
    );
}

#[test]
fn layout_names_are_those_of_config_json_and_the_command_line() {
    use clap::ValueEnum;
    for layout in [Layout::Prompt, Layout::Answer] {
        assert_eq!(
            serde_json::to_value(layout).unwrap(),
            serde_json::json!(layout.name())
        );
        assert_eq!(
            layout.to_possible_value().unwrap().get_name(),
            layout.name()
        );
    }
    assert_ne!(Layout::Prompt.name(), Layout::Answer.name());
}
