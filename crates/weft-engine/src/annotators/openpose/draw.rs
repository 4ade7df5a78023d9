//! OpenCV's uint8 drawing as the pose maps use it (`imgproc/src/drawing.cpp`, 8-connected, no
//! sub-pixel shift, no anti-aliasing): `cv2.ellipse2Poly` with the integer sine table,
//! `cv2.fillConvexPoly` (outline by Bresenham lines, then 16.16 fixed-point edge walking) and
//! filled `cv2.circle`. Pixels are set, never blended, so these reproduce OpenCV exactly.

use crate::preprocess::ImageU8;

const XY_SHIFT: u32 = 16;
const XY_ONE: i64 = 1 << XY_SHIFT;

/// OpenCV's `SinTable`: sin of whole degrees 0..=450 as 7-decimal float literals.
fn sin_table(deg: i32) -> f32 {
    let v = (deg as f64).to_radians().sin();
    // The table's literals are the values rounded to 7 decimals, then read as f32.
    format!("{v:.7}").parse::<f32>().unwrap_or(0.0)
}

/// `cv2.ellipse2Poly(center, axes, angle, arc_start, arc_end, delta)` (integer version: the
/// double points rounded half to even, repeats dropped).
pub fn ellipse2poly(
    center: (i32, i32),
    axes: (i32, i32),
    mut angle: i32,
    mut arc_start: i32,
    mut arc_end: i32,
    delta: i32,
) -> Vec<(i64, i64)> {
    while angle < 0 {
        angle += 360;
    }
    while angle > 360 {
        angle -= 360;
    }
    if arc_start > arc_end {
        std::mem::swap(&mut arc_start, &mut arc_end);
    }
    while arc_start < 0 {
        arc_start += 360;
        arc_end += 360;
    }
    while arc_end > 360 {
        arc_end -= 360;
        arc_start -= 360;
    }
    if arc_end - arc_start > 360 {
        arc_start = 0;
        arc_end = 360;
    }
    let alpha = sin_table(450 - angle) as f64;
    let beta = sin_table(angle) as f64;
    let (cx, cy) = (center.0 as f64, center.1 as f64);
    let mut pts: Vec<(i64, i64)> = Vec::new();
    let mut i = arc_start;
    while i < arc_end + delta {
        let mut a = i.min(arc_end);
        if a < 0 {
            a += 360;
        }
        let x = axes.0 as f64 * sin_table(450 - a) as f64;
        let y = axes.1 as f64 * sin_table(a) as f64;
        let px = (cx + x * alpha - y * beta).round_ties_even() as i64;
        let py = (cy + x * beta + y * alpha).round_ties_even() as i64;
        if pts.last() != Some(&(px, py)) {
            pts.push((px, py));
        }
        i += delta;
    }
    if pts.len() == 1 {
        pts = vec![(center.0 as i64, center.1 as i64); 2];
    }
    pts
}

fn put(img: &mut ImageU8, x: i64, y: i64, color: [u8; 3]) {
    if x >= 0 && y >= 0 && (x as usize) < img.width && (y as usize) < img.height {
        let i = (y as usize * img.width + x as usize) * img.channels;
        img.data[i..i + 3].copy_from_slice(&color);
    }
}

fn hline(img: &mut ImageU8, y: i64, x1: i64, x2: i64, color: [u8; 3]) {
    for x in x1..=x2 {
        put(img, x, y, color);
    }
}

/// `clipLine(Size, pt1, pt2)`: clips the segment to the image; false when nothing is inside.
fn clip_line(w: i64, h: i64, p1: &mut (i64, i64), p2: &mut (i64, i64)) -> bool {
    let (right, bottom) = (w - 1, h - 1);
    if w <= 0 || h <= 0 {
        return false;
    }
    let code = |p: (i64, i64)| {
        (p.0 < 0) as i32
            + (p.0 > right) as i32 * 2
            + (p.1 < 0) as i32 * 4
            + (p.1 > bottom) as i32 * 8
    };
    let (mut c1, mut c2) = (code(*p1), code(*p2));
    if (c1 & c2) == 0 && (c1 | c2) != 0 {
        if c1 & 12 != 0 {
            let a = if c1 < 8 { 0 } else { bottom };
            p1.0 += (a - p1.1) * (p2.0 - p1.0) / (p2.1 - p1.1);
            p1.1 = a;
            c1 = (p1.0 < 0) as i32 + (p1.0 > right) as i32 * 2;
        }
        if c2 & 12 != 0 {
            let a = if c2 < 8 { 0 } else { bottom };
            p2.0 += (a - p2.1) * (p2.0 - p1.0) / (p2.1 - p1.1);
            p2.1 = a;
            c2 = (p2.0 < 0) as i32 + (p2.0 > right) as i32 * 2;
        }
        if (c1 & c2) == 0 && (c1 | c2) != 0 {
            if c1 != 0 {
                let a = if c1 == 1 { 0 } else { right };
                p1.1 += (a - p1.0) * (p2.1 - p1.1) / (p2.0 - p1.0);
                p1.0 = a;
                c1 = 0;
            }
            if c2 != 0 {
                let a = if c2 == 1 { 0 } else { right };
                p2.1 += (a - p2.0) * (p2.1 - p1.1) / (p2.0 - p1.0);
                p2.0 = a;
                c2 = 0;
            }
        }
    }
    (c1 | c2) == 0
}

/// `Line(img, pt1, pt2, color, 8)`: the 8-connected `LineIterator`, drawn left to right.
pub fn line(img: &mut ImageU8, mut p1: (i64, i64), mut p2: (i64, i64), color: [u8; 3]) {
    let (w, h) = (img.width as i64, img.height as i64);
    let outside = |p: (i64, i64)| p.0 < 0 || p.0 >= w || p.1 < 0 || p.1 >= h;
    if (outside(p1) || outside(p2)) && !clip_line(w, h, &mut p1, &mut p2) {
        return;
    }
    if p2.0 < p1.0 {
        std::mem::swap(&mut p1, &mut p2);
    }
    let dx = p2.0 - p1.0;
    let (dy, ystep) = if p2.1 >= p1.1 {
        (p2.1 - p1.1, 1)
    } else {
        (p1.1 - p2.1, -1)
    };
    // Major and minor axis steps.
    let (major, minor, dmaj, dmin) = if dy > dx {
        ((0, ystep), (1, 0), dy, dx)
    } else {
        ((1, 0), (0, ystep), dx, dy)
    };
    let mut err = dmaj - 2 * dmin;
    let (plus, minus) = (2 * dmaj, -2 * dmin);
    let (mut x, mut y) = p1;
    for _ in 0..=dmaj {
        put(img, x, y, color);
        let step_minor = err < 0;
        err += minus + if step_minor { plus } else { 0 };
        x += major.0 + if step_minor { minor.0 } else { 0 };
        y += major.1 + if step_minor { minor.1 } else { 0 };
    }
}

/// `cv2.fillConvexPoly(img, pts, color)` (LINE_8, shift 0).
pub fn fill_convex_poly(img: &mut ImageU8, v: &[(i64, i64)], color: [u8; 3]) {
    fill_convex_poly_shifted(img, v, color, 0);
}

/// OpenCV's `FillConvexPoly` (LINE_8) on vertices with `shift` fractional bits: the outline by
/// `Line` (shift 0) or `Line2` (sub-pixel), then 16.16 fixed-point edge walking.
fn fill_convex_poly_shifted(img: &mut ImageU8, v: &[(i64, i64)], color: [u8; 3], shift: u32) {
    let npts = v.len();
    if npts == 0 {
        return;
    }
    let delta = (1i64 << shift) >> 1;
    let (delta1, delta2) = (XY_ONE >> 1, XY_ONE >> 1);
    let up = |p: (i64, i64)| (p.0 << (XY_SHIFT - shift), p.1 << (XY_SHIFT - shift));
    let mut p0 = up(v[npts - 1]);
    let (mut xmin, mut xmax, mut ymin, mut ymax) = (v[0].0, v[0].0, v[0].1, v[0].1);
    let mut imin = 0;
    for (i, &raw) in v.iter().enumerate() {
        if raw.1 < ymin {
            ymin = raw.1;
            imin = i;
        }
        ymax = ymax.max(raw.1);
        xmax = xmax.max(raw.0);
        xmin = xmin.min(raw.0);
        let p = up(raw);
        if shift == 0 {
            line(
                img,
                (p0.0 >> XY_SHIFT, p0.1 >> XY_SHIFT),
                (p.0 >> XY_SHIFT, p.1 >> XY_SHIFT),
                color,
            );
        } else {
            line2(img, p0, p, color);
        }
        p0 = p;
    }
    let (xmin, xmax) = ((xmin + delta) >> shift, (xmax + delta) >> shift);
    let (ymin, ymax) = ((ymin + delta) >> shift, (ymax + delta) >> shift);
    let (w, h) = (img.width as i64, img.height as i64);
    if npts < 3 || xmax < 0 || ymax < 0 || xmin >= w || ymin >= h {
        return;
    }
    let ymax = ymax.min(h - 1);
    #[derive(Clone, Copy)]
    struct Edge {
        idx: usize,
        di: usize,
        x: i64,
        dx: i64,
        ye: i64,
    }
    let mut edge = [Edge {
        idx: imin,
        di: 1,
        x: -XY_ONE,
        dx: 0,
        ye: ymin,
    }; 2];
    edge[1].di = npts - 1;
    let mut edges = npts as i64;
    let mut y = ymin;
    loop {
        for e in edge.iter_mut() {
            if y >= e.ye {
                let mut idx0 = e.idx;
                let mut idx = (idx0 + e.di) % npts;
                loop {
                    let more = edges > 0;
                    edges -= 1;
                    if !more {
                        break;
                    }
                    let ty = (v[idx].1 + delta) >> shift;
                    if ty > y {
                        let xs = v[idx0].0 << (XY_SHIFT - shift);
                        let xe = v[idx].0 << (XY_SHIFT - shift);
                        e.ye = ty;
                        e.dx = ((xe - xs) * 2 + (ty - y)) / (2 * (ty - y));
                        e.x = xs;
                        e.idx = idx;
                        break;
                    }
                    idx0 = idx;
                    idx = (idx + e.di) % npts;
                }
            }
        }
        if edges < 0 {
            break;
        }
        if y >= 0 {
            let (l, r) = if edge[0].x > edge[1].x {
                (1, 0)
            } else {
                (0, 1)
            };
            let x1 = (edge[l].x + delta1) >> XY_SHIFT;
            let x2 = (edge[r].x + delta2) >> XY_SHIFT;
            if x2 >= 0 && x1 < w {
                hline(img, y, x1.max(0), x2.min(w - 1), color);
            }
        }
        edge[0].x += edge[0].dx;
        edge[1].x += edge[1].dx;
        y += 1;
        if y > ymax {
            break;
        }
    }
}

/// OpenCV's `Line2`: an 8-connected line between 16.16 fixed-point points, each step's minor
/// coordinate rounded, the end point set too.
fn line2(img: &mut ImageU8, mut p1: (i64, i64), mut p2: (i64, i64), color: [u8; 3]) {
    let (w, h) = (img.width as i64, img.height as i64);
    if !clip_line(w << XY_SHIFT, h << XY_SHIFT, &mut p1, &mut p2) {
        return;
    }
    let (dx, dy) = (p2.0 - p1.0, p2.1 - p1.1);
    let (ax, ay) = (dx.abs(), dy.abs());
    let x_major = ax > ay;
    // Walk along the major axis in increasing order.
    if (x_major && dx < 0) || (!x_major && dy < 0) {
        std::mem::swap(&mut p1, &mut p2);
    }
    let (x_step, y_step, mut ecount) = if x_major {
        (
            XY_ONE,
            ((p2.1 - p1.1) << XY_SHIFT) / (ax | 1),
            (p2.0 - p1.0) >> XY_SHIFT,
        )
    } else {
        (
            ((p2.0 - p1.0) << XY_SHIFT) / (ay | 1),
            XY_ONE,
            (p2.1 - p1.1) >> XY_SHIFT,
        )
    };
    let half = XY_ONE >> 1;
    put(
        img,
        (p2.0 + half) >> XY_SHIFT,
        (p2.1 + half) >> XY_SHIFT,
        color,
    );
    let (mut x, mut y) = (p1.0 + half, p1.1 + half);
    if x_major {
        x >>= XY_SHIFT;
        while ecount >= 0 {
            put(img, x, y >> XY_SHIFT, color);
            x += 1;
            y += y_step;
            ecount -= 1;
        }
    } else {
        y >>= XY_SHIFT;
        while ecount >= 0 {
            put(img, x >> XY_SHIFT, y, color);
            x += x_step;
            y += 1;
            ecount -= 1;
        }
    }
}

/// `cv2.line(img, p0, p1, color, thickness)` (LINE_8, shift 0): thickness 1 is [`line`]; thicker
/// lines are OpenCV's `ThickLine`, a filled quadrilateral in 16.16 fixed point plus a filled disc
/// at each end.
pub fn thick_line(
    img: &mut ImageU8,
    p0: (i64, i64),
    p1: (i64, i64),
    color: [u8; 3],
    thickness: i64,
) {
    if thickness <= 1 {
        line(img, p0, p1, color);
        return;
    }
    let (p0, p1) = (
        (p0.0 << XY_SHIFT, p0.1 << XY_SHIFT),
        (p1.0 << XY_SHIFT, p1.1 << XY_SHIFT),
    );
    let inv = 1.0 / XY_ONE as f64;
    let dx = (p0.0 - p1.0) as f64 * inv;
    let dy = (p1.1 - p0.1) as f64 * inv;
    let r = dx * dx + dy * dy;
    let odd = thickness & 1;
    let thick = thickness << (XY_SHIFT - 1);
    if r.abs() > f64::EPSILON {
        let r = (thick as f64 + odd as f64 * XY_ONE as f64 * 0.5) / r.sqrt();
        let dpx = (dy * r).round_ties_even() as i64;
        let dpy = (dx * r).round_ties_even() as i64;
        let pts = [
            (p0.0 + dpx, p0.1 + dpy),
            (p0.0 - dpx, p0.1 - dpy),
            (p1.0 - dpx, p1.1 - dpy),
            (p1.0 + dpx, p1.1 + dpy),
        ];
        fill_convex_poly_shifted(img, &pts, color, XY_SHIFT);
    }
    let radius = (thick + (XY_ONE >> 1)) >> XY_SHIFT;
    for p in [p0, p1] {
        let half = XY_ONE >> 1;
        fill_circle(
            img,
            ((p.0 + half) >> XY_SHIFT, (p.1 + half) >> XY_SHIFT),
            radius,
            color,
        );
    }
}

/// `cv2.circle(img, center, radius, color, thickness=-1)` (LINE_8: OpenCV's `Circle`, spans of
/// the midpoint circle).
pub fn fill_circle(img: &mut ImageU8, center: (i64, i64), radius: i64, color: [u8; 3]) {
    let (mut err, mut dx, mut dy, mut plus, mut minus) =
        (0i64, radius, 0i64, 1i64, (radius << 1) - 1);
    let (w, h) = (img.width as i64, img.height as i64);
    while dx >= dy {
        let (y11, y12, y21, y22) = (center.1 - dy, center.1 + dy, center.1 - dx, center.1 + dx);
        let (x11, x12, x21, x22) = (center.0 - dx, center.0 + dx, center.0 - dy, center.0 + dy);
        if x11 < w && x12 >= 0 && y21 < h && y22 >= 0 {
            let (a, b) = (x11.max(0), x12.min(w - 1));
            for yy in [y11, y12] {
                if (0..h).contains(&yy) {
                    hline(img, yy, a, b, color);
                }
            }
            if x21 < w && x22 >= 0 {
                let (a, b) = (x21.max(0), x22.min(w - 1));
                for yy in [y21, y22] {
                    if (0..h).contains(&yy) {
                        hline(img, yy, a, b, color);
                    }
                }
            }
        }
        dy += 1;
        err += plus;
        plus += 2;
        let mask = if err <= 0 { 0 } else { -1 };
        err -= minus & mask;
        dx += mask;
        minus -= mask & 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sin_table_literals() {
        assert_eq!(sin_table(0), 0.0);
        assert_eq!(sin_table(1), 0.017_452_4);
        assert_eq!(sin_table(90), 1.0);
        assert_eq!(sin_table(450), 1.0);
    }

    #[test]
    fn circle_of_radius_4_is_symmetric() {
        let mut img = ImageU8::zeros(11, 11, 3);
        fill_circle(&mut img, (5, 5), 4, [255, 0, 0]);
        let lit = |y: usize, x: usize| img.data[(y * 11 + x) * 3] == 255;
        for y in 0..11 {
            for x in 0..11 {
                assert_eq!(lit(y, x), lit(10 - y, x));
                assert_eq!(lit(y, x), lit(y, 10 - x));
            }
        }
        assert!(lit(5, 1) && lit(5, 9) && !lit(5, 0));
    }
}
