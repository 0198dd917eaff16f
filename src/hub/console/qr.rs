//! A QR code as inline SVG (enrolment of an authenticator app).
use std::fmt::Write;

/// `text` as an SVG QR code, `px` pixels wide, with its own label.
pub fn svg(text: &str, px: u32, label: &str) -> String {
    let Ok(code) = qrcode::QrCode::new(text.as_bytes()) else {
        return "<p class=\"error\">The code is too long to draw; type the secret instead.</p>".into();
    };
    let w = code.width();
    let size = w + 8;
    let mut path = String::new();
    for (i, c) in code.to_colors().iter().enumerate() {
        if *c == qrcode::Color::Dark {
            let _ = write!(path, "M{} {}h1v1h-1z", i % w + 4, i / w + 4);
        }
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {size} {size}\" width=\"{px}\" height=\"{px}\" \
         role=\"img\" aria-label=\"{}\" shape-rendering=\"crispEdges\"><rect width=\"{size}\" height=\"{size}\" fill=\"#fff\"/>\
         <path d=\"{path}\" fill=\"#000\"/></svg>",
        super::html::esc(label)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_qr_code_is_svg_with_dark_modules() {
        let s = super::svg("otpauth://totp/tether:alice?secret=ABC", 200, "QR <code>");
        assert!(s.starts_with("<svg") && s.contains("M4 4h1v1h-1z") && s.contains("QR &lt;code&gt;"));
    }
}
