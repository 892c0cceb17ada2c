fn main() {
    for (levels, width) in [(2, 29), (3, 29), (5, 29), (11, 29), (11, 5), (11, 2)] {
        let mut text = String::from("profile: x\nb0: &b0 [lol, lol, lol]\n");
        for level in 1..levels {
            let refs = vec![format!("*b{}", level - 1); width].join(", ");
            text.push_str(&format!("b{level}: &b{level} [{refs}]\n"));
        }
        let t = std::time::Instant::now();
        let r = phantom_policy::load_str(&text, "b.yaml");
        println!("{levels}x{width}: {:?} {}", t.elapsed(), match r { Ok(_) => "ok".into(), Err(e) => e.to_string() });
    }
}
