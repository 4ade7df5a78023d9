//! OpenCV's line drawing, pixel for pixel: `cv2.line(img, p1, p2, color, 1)` with the default
//! `LINE_8` and no sub-pixel shift, which is `clipLine` to the image followed by the 8-connected
//! Bresenham walk of `LineIterator` (left to right). Clipping first matters: the walk starts at
//! the clipped integer end points, so a line partly outside the image takes different pixels than
//! the same line drawn on a larger canvas and cropped.

use super::ImageU8;

/// `clipLine(Size2l, Point2l&, Point2l&)`: Cohen-Sutherland clipping to `0..w` x `0..h` with
/// OpenCV's arithmetic (the intersection in f64, truncated toward zero, each end point updated in
/// turn). `None` when the segment misses the image.
fn clip_line(
    w: i64,
    h: i64,
    mut p1: (i64, i64),
    mut p2: (i64, i64),
) -> Option<((i64, i64), (i64, i64))> {
    if w <= 0 || h <= 0 {
        return None;
    }
    let (right, bottom) = (w - 1, h - 1);
    let code = |(x, y): (i64, i64)| {
        i32::from(x < 0)
            + i32::from(x > right) * 2
            + i32::from(y < 0) * 4
            + i32::from(y > bottom) * 8
    };
    let along = |num: i64, d1: i64, d2: i64| ((num as f64) * (d1 as f64) / (d2 as f64)) as i64;
    let (mut c1, mut c2) = (code(p1), code(p2));
    if c1 & c2 == 0 && c1 | c2 != 0 {
        if c1 & 12 != 0 {
            let a = if c1 < 8 { 0 } else { bottom };
            p1.0 += along(a - p1.1, p2.0 - p1.0, p2.1 - p1.1);
            p1.1 = a;
            c1 = i32::from(p1.0 < 0) + i32::from(p1.0 > right) * 2;
        }
        if c2 & 12 != 0 {
            let a = if c2 < 8 { 0 } else { bottom };
            p2.0 += along(a - p2.1, p2.0 - p1.0, p2.1 - p1.1);
            p2.1 = a;
            c2 = i32::from(p2.0 < 0) + i32::from(p2.0 > right) * 2;
        }
        if c1 & c2 == 0 && c1 | c2 != 0 {
            if c1 != 0 {
                let a = if c1 == 1 { 0 } else { right };
                p1.1 += along(a - p1.0, p2.1 - p1.1, p2.0 - p1.0);
                p1.0 = a;
                c1 = 0;
            }
            if c2 != 0 {
                let a = if c2 == 1 { 0 } else { right };
                p2.1 += along(a - p2.0, p2.1 - p1.1, p2.0 - p1.0);
                p2.0 = a;
                c2 = 0;
            }
        }
    }
    (c1 | c2 == 0).then_some((p1, p2))
}

/// `cv2.line(img, p1, p2, [value] * channels, 1)`: sets every channel of the pixels OpenCV's
/// 8-connected line from `p1` to `p2` (x, y) takes; end points may lie outside the image.
pub fn line(img: &mut ImageU8, p1: (i32, i32), p2: (i32, i32), value: u8) {
    let (w, h) = (img.width as i64, img.height as i64);
    let (mut a, mut b) = (
        (i64::from(p1.0), i64::from(p1.1)),
        (i64::from(p2.0), i64::from(p2.1)),
    );
    let inside = |(x, y): (i64, i64)| (0..w).contains(&x) && (0..h).contains(&y);
    if !inside(a) || !inside(b) {
        match clip_line(w, h, a, b) {
            Some((ca, cb)) => (a, b) = (ca, cb),
            None => return,
        }
    }
    // Left to right: a line going left starts from its other end.
    let (mut dx, mut dy) = (b.0 - a.0, b.1 - a.1);
    let start = if dx < 0 {
        dx = -dx;
        dy = -dy;
        b
    } else {
        a
    };
    let y_dir = if dy < 0 { -1 } else { 1 };
    dy = dy.abs();
    // The walk steps along the major axis every pixel and along the minor one when `err` < 0.
    let vertical = dy > dx;
    let (major, minor) = if vertical { (dy, dx) } else { (dx, dy) };
    let (major_step, minor_step) = if vertical {
        ((0, y_dir), (1, 0))
    } else {
        ((1, 0), (0, y_dir))
    };
    let mut err = major - 2 * minor;
    let (mut x, mut y) = start;
    let c = img.channels;
    for _ in 0..=major {
        if inside((x, y)) {
            let i = (y as usize * img.width + x as usize) * c;
            img.data[i..i + c].fill(value);
        }
        x += major_step.0;
        y += major_step.1;
        if err < 0 {
            err += 2 * major - 2 * minor;
            x += minor_step.0;
            y += minor_step.1;
        } else {
            err -= 2 * minor;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drawn(w: usize, h: usize, p1: (i32, i32), p2: (i32, i32)) -> Vec<(usize, usize)> {
        let mut img = ImageU8::zeros(h, w, 1);
        line(&mut img, p1, p2, 255);
        (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .filter(|&(x, y)| img.data[y * w + x] == 255)
            .collect()
    }

    #[test]
    fn shallow_line_steps_like_bresenham() {
        assert_eq!(
            drawn(6, 3, (0, 0), (5, 2)),
            vec![(0, 0), (1, 0), (2, 1), (3, 1), (4, 2), (5, 2)]
        );
    }

    #[test]
    fn a_line_outside_draws_nothing() {
        assert!(drawn(4, 4, (-5, -1), (-1, 10)).is_empty());
    }
}
