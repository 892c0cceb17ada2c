fn main() {
    for text in [
        "profile: x\nresources:\n  memroy: 512MB\n",
        "profile: x\nresources:\n  memory: 512XB\n",
        "profile: x\nresources:\n  pids: 0\n",
        "profile: x\nresources:\n  cpu: -1\n",
        "profile: x\nresources:\n  timeout: 0s\n",
        "profile: x\nresources:\n  pids: 99999999999999999999999\n",
        "profile: x\nperformance:\n  zygote: yes\n",
        "profile: x\nmode: sandbx\n",
        "profile: x\nnetwork:\n  mode: host\n",
        "profile: x\nsecurity:\n  seccomp:\n    deny: [ptrce]\n",
        "profile: x\nfilesystem:\n  etc:\n",
        "profile: x\nfilesystem:\n  workspace: /usr/src\n",
        "profile: x\nfilesystem:\n  system: [/usr, /workspace]\n",
        "profile: x\nfilesystem:\n  binds: [{source: /a, target: /tmp/a}]\n",
        "profile: x\nfilesystem:\n  binds: [{source: /a}]\n",
        "",
        "- a\n",
        "mode: sandbox\n",
        "profile: x\nextends: pyhton-dev\n",
        "profile: x\nextends: ./nope.yaml\n",
        "profile: x\nresources:\n  memory: 1GB\n  memory: 2GB\n",
        "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n",
        "profile: x\nnetwork:\n  firewall: on\n",
        "profile: x\n1: 2\n",
        "profile: x\nmode: hardened\nnetwork:\n  mode: loopback-only\n",
    ] {
        match phantom_policy::load_str(text, "policy.yaml").and_then(|p| phantom_policy::compile(&p, &Default::default())) {
            Ok(p) => println!("OK {:?}", p.warnings),
            Err(e) => println!("{e}"),
        }
    }
    let p = phantom_policy::load_builtin("strict").unwrap();
    let plan = phantom_policy::compile(&p, &Default::default()).unwrap();
    for prog in &plan.seccomp { println!("{} rules={} len={} syscalls={}", prog.name, prog.rule_count, prog.instructions.len(), prog.syscalls.len()); }
    println!("{:?}", plan.env);
    println!("{:#?}", plan.landlock);
    let p = phantom_policy::load_builtin("python-dev").unwrap();
    let plan = phantom_policy::compile(&p, &Default::default()).unwrap();
    println!("{}", serde_json::to_string(&plan.mounts).unwrap());
    println!("{:?}", &plan.seccomp[0].instructions[..12]);
}
