//! Best-fit-decreasing packing: exact bins for a crafted length list, per-document positions,
//! conservation of tokens and labels, determinism.

use distill_student::batch::IGNORE;
use distill_student::pack::{self, best_fit_decreasing, Document};

fn doc(len: usize, first: u32) -> Document {
    let ids: Vec<u32> = (first..first + len as u32).collect();
    let trained: Vec<bool> = (0..len).map(|i| i >= len / 2).collect();
    Document::from_mask(ids, &trained)
}

#[test]
fn bins_are_best_fit_decreasing() {
    // Sorted: 7(i1) 6(i4) 5(i0) 4(i3) 3(i6) 2(i2) 2(i5) 1(i7), capacity 10.
    // 7 → new bin A (free 3); 6 → new B (4); 5 → new C (5); 4 → best fit B (free 4 → 0);
    // 3 → best fit A (3 → 0); 2 → C (5 → 3); 2 → C (3 → 1); 1 → C (1 → 0).
    let lengths = [5, 7, 2, 4, 6, 2, 3, 1];
    let bins = best_fit_decreasing(&lengths, 10).unwrap();
    assert_eq!(bins, vec![vec![1, 6], vec![4, 3], vec![0, 2, 5, 7]]);
    // Best fit, not first fit: 3 goes to the fuller bin (free 3), not the first one open.
    let bins = best_fit_decreasing(&[6, 7, 3], 10).unwrap();
    assert_eq!(bins, vec![vec![1, 2], vec![0]]);
    // Equal free space: the bin that has had it longest wins, here also the older bin.
    let bins = best_fit_decreasing(&[5, 5, 5, 5, 2], 7).unwrap();
    assert_eq!(bins, vec![vec![0, 4], vec![1], vec![2], vec![3]]);
    // ... and here the newer one, as TRL's `bfd` packs: 6 → A (free 3); 4 → B (free 5); 4 → B
    // (free 1); 2 → A (free 1, after B); 1 → B, free 1 first.
    let bins = best_fit_decreasing(&[6, 4, 4, 2, 1], 9).unwrap();
    assert_eq!(bins, vec![vec![0, 3], vec![1, 2, 4]]);
}

#[test]
fn too_long_documents_and_zero_capacity_are_errors() {
    assert!(best_fit_decreasing(&[3, 11], 10)
        .unwrap_err()
        .to_string()
        .contains("document 1 has `11` tokens"));
    assert!(best_fit_decreasing(&[1], 0).is_err());
    assert!(pack::pack(&[doc(11, 0)], 10, true).is_err());
}

#[test]
fn positions_restart_and_tokens_are_conserved() {
    let lengths = [5, 7, 2, 4, 6, 2, 3, 1];
    let mut first = 0;
    let docs: Vec<Document> = lengths
        .iter()
        .map(|&l| {
            let d = doc(l, first);
            first += 100;
            d
        })
        .collect();
    let rows = pack::pack(&docs, 10, true).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].position_ids, vec![0, 1, 2, 3, 4, 5, 6, 0, 1, 2]);
    assert_eq!(rows[2].position_ids, vec![0, 1, 2, 3, 4, 0, 1, 0, 1, 0]);
    // Row 0 holds document 1 (ids 100..107) then document 6 (ids 600..603), labels unchanged.
    assert_eq!(
        &rows[0].input_ids[..7],
        &(100..107).collect::<Vec<u32>>()[..]
    );
    assert_eq!(&rows[0].input_ids[7..], &[600, 601, 602]);
    assert_eq!(&rows[0].labels[7..], &docs[6].labels[..]);
    assert_eq!(
        rows[0].labels[6], IGNORE,
        "no target crosses into the next document"
    );

    let tokens: usize = rows.iter().map(|r| r.len()).sum();
    assert_eq!(tokens, lengths.iter().sum::<usize>());
    let labels: usize = rows.iter().map(|r| r.label_count()).sum();
    assert_eq!(
        labels,
        docs.iter().map(Document::label_count).sum::<usize>()
    );
    let mut all: Vec<u32> = rows.iter().flat_map(|r| r.input_ids.clone()).collect();
    let mut expected: Vec<u32> = docs.iter().flat_map(|d| d.input_ids.clone()).collect();
    all.sort_unstable();
    expected.sort_unstable();
    assert_eq!(all, expected);
    assert!(rows.iter().all(|r| r.len() <= 10));
    assert_eq!(pack::fill_ratio(&rows, 10), 1.0);
}

#[test]
fn packing_is_deterministic_and_can_be_turned_off() {
    let docs: Vec<Document> = (0..200)
        .map(|i| doc(1 + (i * 37 % 61), i as u32 * 1000))
        .collect();
    let a = pack::pack(&docs, 64, true).unwrap();
    let b = pack::pack(&docs, 64, true).unwrap();
    assert_eq!(a, b);
    let total: usize = docs.iter().map(Document::len).sum();
    assert!(a.len() >= total.div_ceil(64));
    // BFD on this list fills the rows well.
    assert!(
        pack::fill_ratio(&a, 64) > 0.9,
        "{}",
        pack::fill_ratio(&a, 64)
    );

    let single = pack::pack(&docs, 64, false).unwrap();
    assert_eq!(single.len(), docs.len());
    for (row, d) in single.iter().zip(&docs) {
        assert_eq!(row.input_ids, d.input_ids);
        assert_eq!(row.labels, d.labels);
        assert_eq!(row.position_ids, (0..d.len() as u32).collect::<Vec<_>>());
    }
}
