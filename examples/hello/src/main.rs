use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use fnv::FnvHasher;
use smallvec::SmallVec;

fn main() {
    // Deterministic output from a few dependencies: a tiny word count over the arguments.
    let mut counts: HashMap<String, u32, BuildHasherDefault<FnvHasher>> = HashMap::default();
    for arg in std::env::args().skip(1) {
        *counts.entry(arg).or_default() += 1;
    }
    let mut words: SmallVec<[(String, u32); 8]> = counts.into_iter().collect();
    words.sort();
    let mut buf = itoa::Buffer::new();
    println!("hello from cmbuild ({} distinct words)", buf.format(words.len()));
    for (word, n) in words {
        println!("{} {} {}", hex::encode(word.as_bytes()), word, buf.format(n));
    }
}
