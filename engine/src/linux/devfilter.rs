//! The cgroup v2 device filter: the device rules as an eBPF program of type
//! BPF_PROG_TYPE_CGROUP_DEVICE, attached to the container's cgroup2 directory. The kernel
//! runs it on every open or mknod of a device and allows the access only if it returns 1.
//!
//! The program reads `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`
//! (type in the low 16 bits of access_type: 1 block, 2 char; access in the high 16: 1
//! mknod, 2 read, 4 write) and tries the rules in order.

use crate::spec::devices::DevicePolicy;

/// One eBPF instruction: (code, dst | src << 4, offset, immediate).
pub type Insn = (u8, u8, i16, i32);

const LDX_MEM_W: u8 = 0x61;
const ALU64_AND_K: u8 = 0x57;
const ALU64_RSH_K: u8 = 0x77;
const ALU64_MOV_K: u8 = 0xb7;
const ALU64_MOV_X: u8 = 0xbf;
const JMP_JNE_K: u8 = 0x55;
const JMP_JNE_X: u8 = 0x5d;
const EXIT: u8 = 0x95;

fn regs(dst: u8, src: u8) -> u8 {
    dst | (src << 4)
}

fn access_bits(access: &str) -> i32 {
    access.chars().fold(0, |a, c| {
        a | match c {
            'm' => 1,
            'r' => 2,
            'w' => 4,
            _ => 0,
        }
    })
}

/// The program for a policy.
pub fn program(policy: &DevicePolicy) -> Vec<Insn> {
    let mut p: Vec<Insn> = vec![
        // r2 = type, r3 = access, r4 = major, r5 = minor
        (LDX_MEM_W, regs(2, 1), 0, 0),
        (ALU64_AND_K, regs(2, 0), 0, 0xffff),
        (LDX_MEM_W, regs(3, 1), 0, 0),
        (ALU64_RSH_K, regs(3, 0), 0, 16),
        (LDX_MEM_W, regs(4, 1), 4, 0),
        (LDX_MEM_W, regs(5, 1), 8, 0),
    ];
    if policy.allow_all {
        p.push((ALU64_MOV_K, regs(0, 0), 0, 1));
        p.push((EXIT, 0, 0, 0));
        return p;
    }
    for r in &policy.rules {
        // Each block ends with "r0 = 1; exit"; a failed check jumps past it.
        let mut block: Vec<Insn> = Vec::new();
        let mut jumps = Vec::new();
        match r.kind {
            'c' | 'b' => {
                jumps.push(block.len());
                block.push((JMP_JNE_K, regs(2, 0), 0, if r.kind == 'b' { 1 } else { 2 }));
            }
            _ => {}
        }
        let bits = access_bits(&r.access);
        if r.kind != 'a' && bits != 7 {
            // Every requested access bit must be allowed: (access & bits) == access.
            block.push((ALU64_MOV_X, regs(1, 3), 0, 0));
            block.push((ALU64_AND_K, regs(1, 0), 0, bits));
            jumps.push(block.len());
            block.push((JMP_JNE_X, regs(1, 3), 0, 0));
        }
        if let Some(m) = r.major {
            jumps.push(block.len());
            block.push((JMP_JNE_K, regs(4, 0), 0, i32::try_from(m).unwrap_or(-1)));
        }
        if let Some(m) = r.minor {
            jumps.push(block.len());
            block.push((JMP_JNE_K, regs(5, 0), 0, i32::try_from(m).unwrap_or(-1)));
        }
        block.push((ALU64_MOV_K, regs(0, 0), 0, 1));
        block.push((EXIT, 0, 0, 0));
        let end = block.len();
        for j in jumps {
            // Offsets count from the instruction after the jump.
            block[j].2 = i16::try_from(end - j - 1).unwrap_or(i16::MAX);
        }
        p.extend(block);
    }
    p.push((ALU64_MOV_K, regs(0, 0), 0, 0));
    p.push((EXIT, 0, 0, 0));
    p
}

/// A little interpreter of the programs [`program`] makes, for the unit tests.
#[cfg(test)]
fn run(p: &[Insn], kind: u32, access: u32, major: u32, minor: u32) -> u64 {
    let ctx = [(access << 16) | kind, major, minor];
    let mut r = [0u64; 11];
    let mut pc = 0usize;
    loop {
        let (code, rg, off, imm) = p[pc];
        let (d, s) = (usize::from(rg & 0xf), usize::from(rg >> 4));
        pc += 1;
        match code {
            LDX_MEM_W => r[d] = u64::from(ctx[usize::try_from(off / 4).unwrap()]),
            ALU64_AND_K => r[d] &= imm as u64,
            ALU64_RSH_K => r[d] >>= imm,
            ALU64_MOV_K => r[d] = imm as u64,
            ALU64_MOV_X => r[d] = r[s],
            JMP_JNE_K => {
                if r[d] != imm as u64 {
                    pc += off as usize;
                }
            }
            JMP_JNE_X => {
                if r[d] != r[s] {
                    pc += off as usize;
                }
            }
            EXIT => return r[0],
            _ => panic!("unknown instruction {code:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::devices::{DeviceRule, default_rules};

    #[test]
    fn the_default_policy_allows_the_standard_set_only() {
        let p = program(&DevicePolicy {
            allow_all: false,
            rules: default_rules(),
        });
        let (rw, m) = (2 | 4, 1);
        assert_eq!(run(&p, 2, rw, 1, 3), 1, "/dev/null read-write");
        assert_eq!(run(&p, 2, rw, 136, 7), 1, "a pty");
        assert_eq!(run(&p, 2, m, 10, 237), 1, "mknod of anything");
        assert_eq!(run(&p, 1, m, 8, 0), 1, "mknod of a block device");
        assert_eq!(run(&p, 1, 2, 8, 0), 0, "reading a disk");
        assert_eq!(run(&p, 2, 2, 10, 237), 0, "opening loop-control");
        assert_eq!(run(&p, 2, 2, 1, 1), 0, "/dev/mem");
    }

    #[test]
    fn granted_access_only() {
        let mut rules = default_rules();
        rules.push(DeviceRule {
            kind: 'c',
            major: Some(10),
            minor: Some(237),
            access: "r".into(),
        });
        let p = program(&DevicePolicy {
            allow_all: false,
            rules,
        });
        assert_eq!(run(&p, 2, 2, 10, 237), 1);
        assert_eq!(run(&p, 2, 4, 10, 237), 0);
        assert_eq!(run(&p, 2, 6, 10, 237), 0);
        let all = program(&DevicePolicy {
            allow_all: true,
            rules: Vec::new(),
        });
        assert_eq!(run(&all, 1, 6, 8, 0), 1);
    }
}
