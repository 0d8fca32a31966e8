//! Exact-where-possible evaluation of constant LaTeX expressions, for numeric answer comparison.
//!
//! Input is a string already produced by [`super::normalize_answer`] (no whitespace, `\frac` and
//! `\sqrt` arguments braced, `^` exponents braced). The grammar is deliberately small: numbers,
//! `+ - * / \cdot \times \div`, implicit multiplication, `^`, parentheses and braces, `\frac`,
//! `\sqrt` (with an optional index) and `\pi`. Anything else — a variable, `i`, `\infty`, a
//! comma — makes the whole expression non-numeric, so symbolic answers fall back to string and
//! structural comparison instead of being guessed at.

/// A value: an exact rational while every step stays rational and fits in `i128`, else a float.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Value {
    Exact(Ratio),
    Approx(f64),
}

/// A reduced fraction with a positive denominator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ratio {
    num: i128,
    den: i128,
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    a = a.abs();
    b = b.abs();
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Ratio {
    fn new(num: i128, den: i128) -> Option<Ratio> {
        if den == 0 {
            return None;
        }
        let g = gcd(num, den).max(1);
        let (mut num, mut den) = (num / g, den / g);
        if den < 0 {
            num = num.checked_neg()?;
            den = den.checked_neg()?;
        }
        Some(Ratio { num, den })
    }

    fn int(n: i128) -> Ratio {
        Ratio { num: n, den: 1 }
    }

    fn to_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }

    fn add(self, o: Ratio) -> Option<Ratio> {
        let num = self
            .num
            .checked_mul(o.den)?
            .checked_add(o.num.checked_mul(self.den)?)?;
        Ratio::new(num, self.den.checked_mul(o.den)?)
    }

    fn mul(self, o: Ratio) -> Option<Ratio> {
        // Cross-reduce first so products of already-reduced fractions overflow less often.
        let g1 = gcd(self.num, o.den).max(1);
        let g2 = gcd(o.num, self.den).max(1);
        Ratio::new(
            (self.num / g1).checked_mul(o.num / g2)?,
            (self.den / g2).checked_mul(o.den / g1)?,
        )
    }

    fn recip(self) -> Option<Ratio> {
        Ratio::new(self.den, self.num)
    }

    fn pow(self, e: i32) -> Option<Ratio> {
        let base = if e < 0 { self.recip()? } else { self };
        let e = e.unsigned_abs();
        Ratio::new(base.num.checked_pow(e)?, base.den.checked_pow(e)?)
    }
}

/// Exact integer `k`-th root of a non-negative `n`, if there is one.
fn int_root(n: i128, k: u32) -> Option<i128> {
    if n < 0 || k == 0 {
        return None;
    }
    let guess = (n as f64).powf(1.0 / f64::from(k)).round() as i128;
    (guess.saturating_sub(1)..=guess.saturating_add(1))
        .find(|&r| r >= 0 && r.checked_pow(k) == Some(n))
}

impl Value {
    pub(crate) fn to_f64(self) -> f64 {
        match self {
            Value::Exact(r) => r.to_f64(),
            Value::Approx(f) => f,
        }
    }

    fn approx(f: f64) -> Option<Value> {
        f.is_finite().then_some(Value::Approx(f))
    }

    fn add(self, o: Value) -> Option<Value> {
        if let (Value::Exact(a), Value::Exact(b)) = (self, o) {
            if let Some(r) = a.add(b) {
                return Some(Value::Exact(r));
            }
        }
        Value::approx(self.to_f64() + o.to_f64())
    }

    fn neg(self) -> Option<Value> {
        match self {
            Value::Exact(r) => Some(Value::Exact(Ratio::new(r.num.checked_neg()?, r.den)?)),
            Value::Approx(f) => Some(Value::Approx(-f)),
        }
    }

    fn mul(self, o: Value) -> Option<Value> {
        if let (Value::Exact(a), Value::Exact(b)) = (self, o) {
            if let Some(r) = a.mul(b) {
                return Some(Value::Exact(r));
            }
        }
        Value::approx(self.to_f64() * o.to_f64())
    }

    fn div(self, o: Value) -> Option<Value> {
        if o.to_f64() == 0.0 {
            return None;
        }
        if let (Value::Exact(a), Value::Exact(b)) = (self, o) {
            if let Some(r) = b.recip().and_then(|rb| a.mul(rb)) {
                return Some(Value::Exact(r));
            }
        }
        Value::approx(self.to_f64() / o.to_f64())
    }

    fn pow(self, e: Value) -> Option<Value> {
        if let (Value::Exact(b), Value::Exact(ex)) = (self, e) {
            if ex.den == 1 && ex.num.abs() <= 256 {
                if let Some(r) = b.pow(ex.num as i32) {
                    return Some(Value::Exact(r));
                }
            }
        }
        Value::approx(self.to_f64().powf(e.to_f64()))
    }

    /// The principal `k`-th root; exact when numerator and denominator are perfect powers.
    fn root(self, k: Value) -> Option<Value> {
        if let (Value::Exact(x), Value::Exact(kr)) = (self, k) {
            if kr.den == 1 && (1..=64).contains(&kr.num) {
                let k = kr.num as u32;
                if let (Some(n), Some(d)) = (int_root(x.num, k), int_root(x.den, k)) {
                    return Some(Value::Exact(Ratio::new(n, d)?));
                }
                if x.num < 0 && k % 2 == 1 {
                    if let (Some(n), Some(d)) = (int_root(-x.num, k), int_root(x.den, k)) {
                        return Some(Value::Exact(Ratio::new(-n, d)?));
                    }
                }
            }
        }
        let (x, k) = (self.to_f64(), k.to_f64());
        if k == 0.0 {
            return None;
        }
        if x < 0.0 {
            // Odd integer roots of negatives are real; everything else is not a real number.
            return (k.fract() == 0.0 && (k as i64) % 2 != 0)
                .then(|| Value::approx(-(-x).powf(1.0 / k)))
                .flatten();
        }
        Value::approx(x.powf(1.0 / k))
    }
}

/// Relative tolerance for comparing values of which at least one is inexact (involves `\pi` or
/// an irrational root): `|a - b| <= 1e-6 * max(|a|, |b|)`. Two exact rationals are compared
/// exactly, so `1000000` and `1000001` stay different.
pub const RELATIVE_TOLERANCE: f64 = 1e-6;

pub(crate) fn values_equal(a: Value, b: Value) -> bool {
    match (a, b) {
        (Value::Exact(x), Value::Exact(y)) => x == y,
        _ => {
            let (x, y) = (a.to_f64(), b.to_f64());
            (x - y).abs() <= RELATIVE_TOLERANCE * x.abs().max(y.abs())
        }
    }
}

/// Evaluates a whole normalized answer, or `None` when it is not a constant expression.
pub(crate) fn evaluate(s: &str) -> Option<Value> {
    if s.is_empty() || !s.is_ascii() {
        return None;
    }
    if let Some(v) = mixed_number(s) {
        return Some(v);
    }
    let mut p = Parser {
        s: s.as_bytes(),
        pos: 0,
        depth: 0,
    };
    let v = p.expr()?;
    (p.pos == p.s.len()).then_some(v)
}

/// `1\frac{4}{5}` is the mixed number 9/5 in answer keys, not the product 4/5, so a whole
/// answer of the form `[-]N\frac{P}{Q}` with integer `N`, `P`, `Q` is read as `N + P/Q`.
fn mixed_number(s: &str) -> Option<Value> {
    let (neg, rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let at = rest.find("\\frac{")?;
    let whole = &rest[..at];
    let frac = rest[at + "\\frac{".len()..].strip_suffix('}')?;
    let (p, q) = frac.split_once("}{")?;
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !(digits(whole) && digits(p) && digits(q)) {
        return None;
    }
    let r = Ratio::int(whole.parse().ok()?).add(Ratio::new(p.parse().ok()?, q.parse().ok()?)?)?;
    let v = Value::Exact(r);
    if neg {
        v.neg()
    } else {
        Some(v)
    }
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    depth: usize,
}

/// Nesting limit, so a hostile answer cannot overflow the stack.
const MAX_DEPTH: usize = 64;

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, lit: &str) -> bool {
        let lit = lit.as_bytes();
        if self.s[self.pos..].starts_with(lit) {
            // A control word only matches whole: `\pi` must not match the start of `\pie`.
            let next = self.s.get(self.pos + lit.len());
            if lit[0] == b'\\' && lit.len() > 1 && next.is_some_and(u8::is_ascii_alphabetic) {
                return false;
            }
            self.pos += lit.len();
            true
        } else {
            false
        }
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    fn expr(&mut self) -> Option<Value> {
        self.enter()?;
        let mut v = self.unary()?;
        loop {
            if self.eat("+") {
                v = v.add(self.unary()?)?;
            } else if self.eat("-") {
                v = v.add(self.unary()?.neg()?)?;
            } else {
                break;
            }
        }
        self.depth -= 1;
        Some(v)
    }

    fn unary(&mut self) -> Option<Value> {
        if self.eat("-") {
            self.enter()?;
            let v = self.unary()?.neg();
            self.depth -= 1;
            v
        } else if self.eat("+") {
            self.unary()
        } else {
            self.term()
        }
    }

    fn term(&mut self) -> Option<Value> {
        let mut v = self.power()?;
        loop {
            if self.eat("*") || self.eat("\\cdot") || self.eat("\\times") {
                v = v.mul(self.power()?)?;
            } else if self.eat("/") || self.eat("\\div") {
                v = v.div(self.power()?)?;
            } else if self.starts_atom() {
                v = v.mul(self.power()?)?;
            } else {
                break;
            }
        }
        Some(v)
    }

    fn starts_atom(&self) -> bool {
        match self.peek() {
            Some(b'0'..=b'9' | b'.' | b'{' | b'(') => true,
            Some(b'\\') => {
                let rest = &self.s[self.pos..];
                [&b"\\frac"[..], b"\\sqrt", b"\\pi"]
                    .iter()
                    .any(|w| rest.starts_with(w))
            }
            _ => false,
        }
    }

    fn power(&mut self) -> Option<Value> {
        let base = self.atom()?;
        if self.eat("^") {
            let e = self.atom()?;
            base.pow(e)
        } else {
            Some(base)
        }
    }

    fn group(&mut self, open: &str, close: &str) -> Option<Value> {
        if !self.eat(open) {
            return None;
        }
        let v = self.expr()?;
        self.eat(close).then_some(v)
    }

    fn atom(&mut self) -> Option<Value> {
        match self.peek()? {
            b'0'..=b'9' | b'.' => self.number(),
            b'{' => self.group("{", "}"),
            b'(' => self.group("(", ")"),
            b'\\' => {
                if self.eat("\\frac") || self.eat("\\dfrac") {
                    let n = self.group("{", "}")?;
                    let d = self.group("{", "}")?;
                    n.div(d)
                } else if self.eat("\\sqrt") {
                    let k = if self.peek() == Some(b'[') {
                        self.group("[", "]")?
                    } else {
                        Value::Exact(Ratio::int(2))
                    };
                    self.group("{", "}")?.root(k)
                } else if self.eat("\\pi") {
                    Some(Value::Approx(std::f64::consts::PI))
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// `12`, `1.5`, `.25`, `6.02e23`, `1e-3` (an `e` only counts as an exponent when digits
    /// follow it, otherwise the literal stops before it and the `e` fails as a variable).
    fn number(&mut self) -> Option<Value> {
        let s = self.s;
        let start = self.pos;
        let mut i = start;
        while i < s.len() && s[i].is_ascii_digit() {
            i += 1;
        }
        let int_end = i;
        let mut frac_end = i;
        if i < s.len() && s[i] == b'.' {
            i += 1;
            while i < s.len() && s[i].is_ascii_digit() {
                i += 1;
            }
            frac_end = i;
        }
        if frac_end == start || (int_end == start && frac_end == start + 1) {
            return None; // a lone `.`
        }
        let mut exp: i32 = 0;
        if i < s.len() && (s[i] == b'e' || s[i] == b'E') {
            let mut j = i + 1;
            let neg = j < s.len() && s[j] == b'-';
            if j < s.len() && (s[j] == b'-' || s[j] == b'+') {
                j += 1;
            }
            let digits_start = j;
            while j < s.len() && s[j].is_ascii_digit() {
                j += 1;
            }
            if j > digits_start {
                let e: i32 = std::str::from_utf8(&s[digits_start..j])
                    .ok()?
                    .parse()
                    .ok()?;
                exp = if neg { -e } else { e };
                i = j;
            }
        }
        self.pos = i;
        let text = std::str::from_utf8(&s[start..frac_end]).ok()?;
        let (int_part, frac_part) = text.split_once('.').unwrap_or((text, ""));
        let exact = (|| {
            let digits = format!("{int_part}{frac_part}");
            let num: i128 = if digits.is_empty() {
                0
            } else {
                digits.parse().ok()?
            };
            let scale = 10i128.checked_pow(u32::try_from(frac_part.len()).ok()?)?;
            let r = Ratio::new(num, scale)?;
            r.mul(Ratio::int(10).pow(exp)?)
        })();
        match exact {
            Some(r) => Some(Value::Exact(r)),
            None => {
                let f: f64 = std::str::from_utf8(&s[start..i]).ok()?.parse().ok()?;
                Value::approx(f)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(s: &str) -> (i128, i128) {
        match evaluate(s) {
            Some(Value::Exact(r)) => (r.num, r.den),
            other => panic!("{s} evaluated to {other:?}"),
        }
    }

    fn approx(s: &str) -> f64 {
        match evaluate(s) {
            Some(Value::Approx(f)) => f,
            other => panic!("{s} evaluated to {other:?}"),
        }
    }

    #[test]
    fn rationals_stay_exact() {
        assert_eq!(exact("3/4"), (3, 4));
        assert_eq!(exact("0.75"), (3, 4));
        assert_eq!(exact(".0000672"), (21, 312_500));
        assert_eq!(exact("\\frac{3}{4}"), (3, 4));
        assert_eq!(exact("-\\frac{35}{9}"), (-35, 9));
        assert_eq!(exact("1\\frac{4}{5}"), (9, 5));
        assert_eq!(exact("2^{10}"), (1024, 1));
        assert_eq!(exact("2^{-2}"), (1, 4));
        assert_eq!(exact("6.72\\times10^{-5}"), (21, 312_500));
        assert_eq!(exact("6.72e-5"), (21, 312_500));
        assert_eq!(exact("\\sqrt{\\frac{9}{4}}"), (3, 2));
        assert_eq!(exact("\\sqrt[3]{-27}"), (-3, 1));
        assert_eq!(exact("(1+2)(3+4)"), (21, 1));
        assert_eq!(exact("-2^{2}"), (-4, 1));
    }

    #[test]
    fn irrationals_are_floats() {
        assert!((approx("2\\sqrt{5}") - 20f64.sqrt()).abs() < 1e-12);
        assert!((approx("\\frac{\\pi}{2}") - std::f64::consts::FRAC_PI_2).abs() < 1e-12);
    }

    #[test]
    fn symbols_are_not_numbers() {
        for s in [
            "x",
            "2x",
            "6-5i",
            "\\infty",
            "(1,2)",
            "1,2",
            "e",
            "\\pie",
            "3+",
            "",
            "1/0",
            "\\sqrt{-4}",
        ] {
            assert_eq!(evaluate(s), None, "{s}");
        }
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let s = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert_eq!(evaluate(&s), None);
        let s = "-".repeat(10_000) + "1";
        assert_eq!(evaluate(&s), None);
    }
}
