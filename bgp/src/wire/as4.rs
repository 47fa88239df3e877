//! AS4_PATH on receipt and its merge with AS_PATH (RFC 6793 §4.2.3, §6).

use crate::message::AsSegment;

use super::reader::Reader;

/// AS4_PATH (RFC 6793 §6). `None` when malformed (the caller discards the attribute);
/// confederation segments are dropped as the RFC says.
pub(super) fn parse_as4_path(value: &[u8]) -> Option<Vec<AsSegment>> {
    if value.len() < 6 || !value.len().is_multiple_of(2) {
        return None;
    }
    let mut r = Reader::new(value);
    let mut out = Vec::new();
    while !r.is_empty() {
        let kind = r.u8()?;
        let count = r.u8()?;
        if count == 0 {
            return None;
        }
        let mut asns = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            asns.push(r.u32()?);
        }
        match kind {
            1 => out.push(AsSegment::Set(asns)),
            2 => out.push(AsSegment::Sequence(asns)),
            3 | 4 => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Number of ASes a path counts for in RFC 6793 §4.2.3 (a SET counts as one).
pub(super) fn path_count(path: &[AsSegment]) -> usize {
    path.iter()
        .map(|s| match s {
            AsSegment::Sequence(v) => v.len(),
            AsSegment::Set(_) => 1,
        })
        .sum()
}

/// RFC 6793 §4.2.3: when AS_PATH counts fewer ASes than AS4_PATH, AS4_PATH is ignored;
/// otherwise the leading ASes of AS_PATH that AS4_PATH lacks are kept in front of it.
pub fn merge_as4_path(as_path: Vec<AsSegment>, as4_path: Vec<AsSegment>) -> Vec<AsSegment> {
    let n = path_count(&as_path);
    let n4 = path_count(&as4_path);
    if n < n4 {
        return as_path;
    }
    let mut keep = n - n4;
    let mut out: Vec<AsSegment> = Vec::new();
    for seg in as_path {
        if keep == 0 {
            break;
        }
        match seg {
            AsSegment::Sequence(mut v) => {
                if v.len() > keep {
                    v.truncate(keep);
                }
                keep -= v.len();
                out.push(AsSegment::Sequence(v));
            }
            AsSegment::Set(v) => {
                keep -= 1;
                out.push(AsSegment::Set(v));
            }
        }
    }
    // Join the two halves into one sequence where they meet (cosmetic: same path).
    let mut as4 = as4_path.into_iter();
    match (out.last_mut(), as4.next()) {
        (Some(AsSegment::Sequence(last)), Some(AsSegment::Sequence(v))) => last.extend(v),
        (_, Some(seg)) => out.push(seg),
        (_, None) => {}
    }
    out.extend(as4);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testutil::*;

    #[test]
    fn as4_path_merge_rfc6793() {
        // AS_PATH 65001 23456 23456 65002 + AS4_PATH 4200000001 4200000002 65002
        let as4 = |asns: &[u32]| {
            let mut v = vec![2, u8::try_from(asns.len()).expect("len")];
            for a in asns {
                v.extend_from_slice(&a.to_be_bytes());
            }
            attr(0xc0, 17, &v)
        };
        let attrs = [
            origin_igp(),
            as_path2(&[65001, AS_TRANS, AS_TRANS, 65002]),
            next_hop(),
            as4(&[4_200_000_001, 4_200_000_002, 65002]),
        ]
        .concat();
        let u = decode_update_bytes(&update(&[], &attrs, &NLRI), &AS2).expect("ok");
        assert_eq!(
            u.attributes.expect("attrs").as_path,
            vec![AsSegment::Sequence(vec![
                65001,
                4_200_000_001,
                4_200_000_002,
                65002
            ])]
        );
        // AS4_PATH longer than AS_PATH: ignored.
        let attrs = [
            origin_igp(),
            as_path2(&[AS_TRANS]),
            next_hop(),
            as4(&[4_200_000_001, 4_200_000_002]),
        ]
        .concat();
        let u = decode_update_bytes(&update(&[], &attrs, &NLRI), &AS2).expect("ok");
        assert_eq!(
            u.attributes.expect("attrs").as_path,
            vec![AsSegment::Sequence(vec![u32::from(AS_TRANS)])]
        );
        // AGGREGATOR with a real AS: AS4_PATH and AS4_AGGREGATOR are ignored.
        let attrs = [
            origin_igp(),
            as_path2(&[65001, AS_TRANS]),
            next_hop(),
            attr(0xc0, 7, &[0xfd, 0xe9, 192, 0, 2, 5]),
            as4(&[4_200_000_001]),
            attr(0xc0, 18, &[0xfa, 0x56, 0xea, 0x01, 192, 0, 2, 6]),
        ]
        .concat();
        let a = decode_update_bytes(&update(&[], &attrs, &NLRI), &AS2)
            .expect("ok")
            .attributes
            .expect("attrs");
        assert_eq!(a.as_path, vec![AsSegment::Sequence(vec![65001, 23456])]);
        assert_eq!(
            a.aggregator,
            Some((65001, "192.0.2.5".parse().expect("ip")))
        );
        // AGGREGATOR with AS_TRANS: AS4_AGGREGATOR replaces it and AS4_PATH merges.
        let attrs = [
            origin_igp(),
            as_path2(&[65001, AS_TRANS]),
            next_hop(),
            attr(0xc0, 7, &[0x5b, 0xa0, 192, 0, 2, 5]),
            as4(&[4_200_000_001]),
            attr(0xc0, 18, &[0xfa, 0x56, 0xea, 0x01, 192, 0, 2, 6]),
        ]
        .concat();
        let a = decode_update_bytes(&update(&[], &attrs, &NLRI), &AS2)
            .expect("ok")
            .attributes
            .expect("attrs");
        assert_eq!(
            a.as_path,
            vec![AsSegment::Sequence(vec![65001, 4_200_000_001])]
        );
        assert_eq!(
            a.aggregator,
            Some((4_200_000_001, "192.0.2.6".parse().expect("ip")))
        );
        // Confederation segments in AS4_PATH are dropped, the rest is used.
        let mut v = vec![3, 1];
        v.extend_from_slice(&64512u32.to_be_bytes());
        v.extend_from_slice(&[2, 1]);
        v.extend_from_slice(&4_200_000_001u32.to_be_bytes());
        let attrs = [
            origin_igp(),
            as_path2(&[65001, AS_TRANS]),
            next_hop(),
            attr(0xc0, 17, &v),
        ]
        .concat();
        let a = decode_update_bytes(&update(&[], &attrs, &NLRI), &AS2)
            .expect("ok")
            .attributes
            .expect("attrs");
        assert_eq!(
            a.as_path,
            vec![AsSegment::Sequence(vec![65001, 4_200_000_001])]
        );
        // Splitting inside a sequence and keeping a leading SET.
        let merged = merge_as4_path(
            vec![
                AsSegment::Set(vec![1, 2]),
                AsSegment::Sequence(vec![3, 23456, 23456]),
            ],
            vec![AsSegment::Sequence(vec![70000, 80000])],
        );
        assert_eq!(
            merged,
            vec![
                AsSegment::Set(vec![1, 2]),
                AsSegment::Sequence(vec![3, 70000, 80000]),
            ]
        );
    }
}
