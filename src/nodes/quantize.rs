//! Colour quantisation as ComfyUI's ImageQuantize gets it from PIL: a median-cut palette
//! (`Image.quantize(colors)`, Pillow's `Quant.c`), then every pixel mapped to that palette
//! (`Image.quantize(palette=…)`, Pillow's `ConvertColor.c`/`Palette.c`) with no dithering,
//! Floyd-Steinberg, or ComfyUI's ordered Bayer dithering. Written from Pillow's algorithms, step
//! for step, so that the palette and the mapping are the same colours.

use std::collections::HashMap;

/// How pixels are mapped to the palette.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dither {
    None,
    FloydSteinberg,
    /// ComfyUI's ordered dither with a Bayer matrix of this order (2, 4, 8 or 16).
    Bayer(usize),
}

/// `rgb` (`w` x `h`, 3 bytes a pixel) reduced to at most `colors` colours, as RGB bytes.
pub fn quantize(rgb: &[u8], w: usize, h: usize, colors: usize, dither: Dither) -> Vec<u8> {
    let pixels: Vec<[u8; 3]> = rgb.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect();
    let palette = median_cut_palette(&pixels, colors.clamp(1, 256));
    let mapper = Mapper::new(&palette);
    let indices: Vec<usize> = match dither {
        Dither::None => pixels.iter().map(|p| mapper.closest(*p)).collect(),
        Dither::FloydSteinberg => floyd_steinberg(&pixels, w, h, &mapper),
        Dither::Bayer(order) => {
            let matrix = bayer_matrix(order, palette.len());
            pixels
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let t = matrix[(i / w.max(1)) % order * order + (i % w.max(1)) % order];
                    // float32 pixel + threshold, clamped, then cast to uint8 (a truncation).
                    let shift = |v: u8| (f32::from(v) + t).clamp(0.0, 255.0) as u8;
                    mapper.closest([shift(p[0]), shift(p[1]), shift(p[2])])
                })
                .collect()
        }
    };
    indices.iter().flat_map(|&i| palette[i]).collect()
}

/// ComfyUI's `normalized_bayer_matrix(log2(order))` scaled by `2 * 256 / colors` plus 0.5, in
/// float32 as numpy computes it, row-major `order` x `order`.
fn bayer_matrix(order: usize, colors: usize) -> Vec<f32> {
    let mut m = vec![0.0f32];
    let mut n = 1;
    while n < order {
        let q = (4 * n * n) as f32;
        let scaled: Vec<f32> = m.iter().map(|v| v * q).collect();
        let size = 2 * n;
        let mut next = vec![0.0f32; size * size];
        for (block, offset) in [(0, -1.5f32), (1, 0.5), (2, 1.5), (3, -0.5)] {
            let (by, bx) = (block / 2, block % 2);
            for y in 0..n {
                for x in 0..n {
                    next[(by * n + y) * size + bx * n + x] = (scaled[y * n + x] + offset) / q;
                }
            }
        }
        m = next;
        n = size;
    }
    let spread = (2.0 * 256.0 / colors as f64) as f32;
    m.iter().map(|v| spread * v + 0.5).collect()
}

/// Pillow's `Image.quantize(colors)` palette for an RGB image: median cut over the pixel
/// histogram, each box's colour the rounded mean of its pixels, boxes in tree order.
fn median_cut_palette(pixels: &[[u8; 3]], colors: usize) -> Vec<[u8; 3]> {
    // Pillow hashes colours at the smallest precision loss that keeps ≤ 65536 of them.
    let mut scale = 0;
    let mut histogram: HashMap<[u8; 3], u32> = HashMap::new();
    loop {
        histogram.clear();
        for p in pixels {
            *histogram.entry(p.map(|v| v >> scale)).or_default() += 1;
        }
        if histogram.len() <= 65536 || scale == 7 {
            break;
        }
        scale += 1;
    }
    // Sorted for determinism; Pillow's list order does not change which colours a box holds.
    let mut entries: Vec<([u8; 3], u32)> = histogram.into_iter().collect();
    entries.sort_unstable();

    let mut boxes = vec![ColorBox::new(
        (0..entries.len()).collect(),
        pixels.len() as u32,
    )];
    let mut heap = Heap::default();
    heap.add(0, &boxes);
    'cut: for _ in 1..colors {
        let index = loop {
            match heap.remove(&boxes) {
                None => break 'cut,
                Some(i) if boxes[i].volume(&entries) != 1 => break i,
                Some(_) => {}
            }
        };
        let (left, right) = boxes[index].split(&entries);
        let (l, r) = (boxes.len(), boxes.len() + 1);
        boxes.push(left);
        boxes.push(right);
        boxes[index].children = Some((l, r));
        heap.add(l, &boxes);
        heap.add(r, &boxes);
    }

    // Leaves in tree order (left first) number the palette.
    let mut box_of: HashMap<[u8; 3], usize> = HashMap::new();
    let mut leaves = 0;
    let mut stack = vec![0];
    while let Some(i) = stack.pop() {
        match boxes[i].children {
            Some((l, r)) => {
                stack.push(r);
                stack.push(l);
            }
            None => {
                for &e in &boxes[i].entries {
                    box_of.insert(entries[e].0, leaves);
                }
                leaves += 1;
            }
        }
    }
    let mut sums = vec![[0u64; 3]; leaves];
    let mut counts = vec![0u64; leaves];
    for p in pixels {
        let b = box_of[&p.map(|v| v >> scale)];
        for c in 0..3 {
            sums[b][c] += u64::from(p[c]);
        }
        counts[b] += 1;
    }
    sums.iter()
        .zip(&counts)
        .map(|(s, &n)| s.map(|v| (0.5 + v as f64 / n as f64) as u8))
        .collect()
}

/// A median-cut box: histogram entries and their pixel count.
struct ColorBox {
    entries: Vec<usize>,
    pixel_count: u32,
    children: Option<(usize, usize)>,
}

impl ColorBox {
    fn new(entries: Vec<usize>, pixel_count: u32) -> ColorBox {
        ColorBox {
            entries,
            pixel_count,
            children: None,
        }
    }

    fn range(&self, entries: &[([u8; 3], u32)], axis: usize) -> (i32, i32) {
        let values = self.entries.iter().map(|&e| i32::from(entries[e].0[axis]));
        let lo = values.clone().min().unwrap_or(0);
        (lo, values.max().unwrap_or(0))
    }

    fn volume(&self, entries: &[([u8; 3], u32)]) -> i32 {
        (0..3)
            .map(|a| {
                let (lo, hi) = self.range(entries, a);
                hi - lo + 1
            })
            .product()
    }

    /// Pillow's `split`: cut along the axis of largest luminance-weighted range, after the
    /// colour value where half the pixels (counted from the top) are reached.
    fn split(&self, entries: &[([u8; 3], u32)]) -> (ColorBox, ColorBox) {
        let weights = [77, 150, 29];
        let mut axis = 0;
        let mut best = i32::MIN;
        for (a, w) in weights.iter().enumerate() {
            let (lo, hi) = self.range(entries, a);
            let f = (hi - lo) * w;
            if f > best {
                best = f;
                axis = a;
            }
        }
        let mut sorted = self.entries.clone();
        sorted.sort_by_key(|&e| std::cmp::Reverse(entries[e].0[axis]));
        let value = |i: usize| entries[sorted[i]].0[axis];
        let mut left = 0u64;
        let mut cut = 0;
        while cut < sorted.len() {
            left += u64::from(entries[sorted[cut]].1);
            cut += 1;
            if left * 2 > u64::from(self.pixel_count) {
                break;
            }
        }
        if cut < sorted.len() {
            let last = value(cut - 1);
            while cut < sorted.len() && value(cut) == last {
                cut += 1;
            }
        }
        if cut == sorted.len() {
            // Nothing went right: the lowest value does.
            let lowest = value(sorted.len() - 1);
            while cut > 0 && value(cut - 1) == lowest {
                cut -= 1;
            }
        }
        let count = |list: &[usize]| list.iter().map(|&e| entries[e].1).sum::<u32>();
        let (l, r) = sorted.split_at(cut);
        (
            ColorBox::new(l.to_vec(), count(l)),
            ColorBox::new(r.to_vec(), count(r)),
        )
    }
}

/// Pillow's `QuantHeap`: a 1-based binary max-heap by pixel count, whose tie order decides
/// which of two equal boxes splits first.
#[derive(Default)]
struct Heap {
    items: Vec<usize>,
}

impl Heap {
    fn cmp(boxes: &[ColorBox], a: usize, b: usize) -> i64 {
        i64::from(boxes[a].pixel_count as i32) - i64::from(boxes[b].pixel_count as i32)
    }

    fn add(&mut self, value: usize, boxes: &[ColorBox]) {
        if self.items.is_empty() {
            self.items.push(usize::MAX); // slot 0 is unused
        }
        self.items.push(value);
        let mut k = self.items.len() - 1;
        while k != 1 {
            if Self::cmp(boxes, value, self.items[k / 2]) <= 0 {
                break;
            }
            self.items[k] = self.items[k / 2];
            k /= 2;
        }
        self.items[k] = value;
    }

    fn remove(&mut self, boxes: &[ColorBox]) -> Option<usize> {
        if self.items.len() <= 1 {
            return None;
        }
        let top = self.items[1];
        let v = self.items.pop().expect("the heap is not empty");
        let count = self.items.len() - 1;
        if count == 0 {
            return Some(top);
        }
        let mut k = 1;
        while k * 2 <= count {
            let mut l = k * 2;
            if l < count && Self::cmp(boxes, self.items[l], self.items[l + 1]) < 0 {
                l += 1;
            }
            if Self::cmp(boxes, v, self.items[l]) > 0 {
                break;
            }
            self.items[k] = self.items[l];
            k = l;
        }
        self.items[k] = v;
        Some(top)
    }
}

/// Pillow's mapping of a colour to a palette index (`ImagingPaletteCacheUpdate`): the entry
/// nearest to the corner of the colour's 4x4x4 cache cell, the first on ties. Even a colour that
/// is in the palette can map to a neighbour nearer that corner, as it does in Pillow (13.0).
struct Mapper<'a> {
    palette: &'a [[u8; 3]],
    cache: std::cell::RefCell<HashMap<[u8; 3], usize>>,
}

impl<'a> Mapper<'a> {
    fn new(palette: &'a [[u8; 3]]) -> Mapper<'a> {
        Mapper {
            palette,
            cache: Default::default(),
        }
    }

    fn closest(&self, p: [u8; 3]) -> usize {
        let corner = p.map(|v| v & 0xfc);
        *self.cache.borrow_mut().entry(corner).or_insert_with(|| {
            let dist = |c: &[u8; 3]| {
                (0..3)
                    .map(|k| (i32::from(corner[k]) - i32::from(c[k])).pow(2))
                    .sum::<i32>()
            };
            let mut best = 0;
            for (i, c) in self.palette.iter().enumerate() {
                if dist(c) < dist(&self.palette[best]) {
                    best = i;
                }
            }
            best
        })
    }
}

/// Pillow's Floyd-Steinberg loop (`topalette_colour_floyd_steinberg`), transcribed with its
/// integer error terms, including the row end that stores the blue terms in all three slots.
fn floyd_steinberg(pixels: &[[u8; 3]], w: usize, h: usize, mapper: &Mapper) -> Vec<usize> {
    let mut out = Vec::with_capacity(pixels.len());
    let mut errors = vec![0i32; 3 * (w + 1)];
    for y in 0..h {
        let mut cur = [0i32; 3]; // r, g, b
        let mut e0 = [0i32; 3]; // r0, g0, b0
        let mut e1 = [0i32; 3]; // r1, g1, b1
        let mut e2 = 0i32; // b2 (r2 and g2 are only read as temporaries)
        for x in 0..w {
            let e = 3 * x;
            let p = pixels[y * w + x];
            for c in 0..3 {
                cur[c] = (i32::from(p[c]) + (cur[c] + errors[e + 3 + c]) / 16).clamp(0, 255);
            }
            let index = mapper.closest(cur.map(|v| v as u8));
            out.push(index);
            for c in 0..3 {
                let mut v = cur[c] - i32::from(mapper.palette[index][c]);
                let v2 = v;
                let d2 = v + v;
                v += d2;
                errors[e + c] = v + e0[c];
                v += d2;
                e0[c] = v + e1[c];
                e1[c] = v2;
                v += d2;
                cur[c] = v;
                if c == 2 {
                    e2 = v2;
                }
            }
        }
        let e = 3 * w;
        errors[e] = e0[2];
        errors[e + 1] = e1[2];
        errors[e + 2] = e2;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_colour_is_the_rounded_mean() {
        let rgb = [0, 0, 0, 255, 255, 255, 10, 20, 31];
        let out = quantize(&rgb, 3, 1, 1, Dither::None);
        // Means 88.33, 91.67, 95.33 round (0.5 + x, truncated) to 88, 92, 95.
        assert_eq!(out, [88, 92, 95, 88, 92, 95, 88, 92, 95]);
    }

    #[test]
    fn colours_map_through_their_cache_cell_corner() {
        // (107, 106, 105) is in the palette, but its cell corner (104, 104, 104) is nearer
        // (104, 103, 104): Pillow maps it there.
        let rgb = [107, 106, 105, 104, 103, 104];
        assert_eq!(
            quantize(&rgb, 2, 1, 256, Dither::None),
            [104, 103, 104, 104, 103, 104]
        );
    }

    #[test]
    fn bayer_2_matches_comfyui() {
        // normalized [[-1.5, 0.5], [1.5, -0.5]] / 4, spread 512 / 2 = 256.
        assert_eq!(bayer_matrix(2, 2), vec![-95.5, 32.5, 96.5, -31.5]);
    }
}
