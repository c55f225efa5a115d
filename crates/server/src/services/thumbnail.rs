//! Thumbnails of images, as the spec's Thumbnails section describes them:
//! `scale` fits the image within the requested box keeping its aspect ratio
//! (never enlarging it), `crop` fills the box and crops what overflows,
//! centred, so the thumbnail has exactly the requested size. Pure functions
//! on bytes; the media service caches what they produce.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, codecs::jpeg::JpegEncoder};

/// Largest thumbnail side served; larger requests are shrunk to it, keeping their proportions.
pub const MAX_SIDE: u32 = 2048;
/// Largest source image decoded, per side and in decoder memory.
const MAX_SOURCE_SIDE: u32 = 16_384;
const MAX_DECODE_BYTES: u64 = 256 * 1024 * 1024;
const JPEG_QUALITY: u8 = 85;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Crop,
    Scale,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Crop => "crop",
            Method::Scale => "scale",
        }
    }
}

/// A requested thumbnail: the box and how to fit the image in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub width: u32,
    pub height: u32,
    pub method: Method,
}

impl Size {
    /// The request as served: both sides at least 1, at most [`MAX_SIDE`]
    /// (shrunk in proportion). `None` for a zero side.
    pub fn new(width: u64, height: u64, method: Method) -> Option<Size> {
        if width == 0 || height == 0 {
            return None;
        }
        let longest = width.max(height);
        let (width, height) = if longest > u64::from(MAX_SIDE) {
            let shrink = |side: u64| ((side * u64::from(MAX_SIDE)) / longest).max(1);
            (shrink(width), shrink(height))
        } else {
            (width, height)
        };
        Some(Size {
            width: u32::try_from(width).ok()?,
            height: u32::try_from(height).ok()?,
            method,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    /// Not an image this server decodes (PNG, JPEG, GIF, WebP), or a broken one.
    #[error("cannot thumbnail this content: {0}")]
    Unsupported(String),
    /// Over the decoding limits.
    #[error("image too large to thumbnail")]
    TooLarge,
    #[error("encoding the thumbnail: {0}")]
    Encode(String),
}

/// A generated thumbnail.
pub struct Thumbnail {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
}

/// The content type of a thumbnail this module made, from its first bytes.
pub fn content_type_of(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        "image/jpeg"
    } else {
        "image/png"
    }
}

/// Makes a thumbnail: JPEG for a JPEG source, PNG (which keeps transparency)
/// for the others. Animated images give their first frame. CPU-bound.
pub fn generate(source: &[u8], size: Size) -> Result<Thumbnail, ThumbnailError> {
    let mut reader = ImageReader::new(Cursor::new(source))
        .with_guessed_format()
        .map_err(|e| ThumbnailError::Unsupported(e.to_string()))?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP)) => f,
        _ => return Err(ThumbnailError::Unsupported("not a PNG, JPEG, GIF or WebP image".into())),
    };
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SOURCE_SIDE);
    limits.max_image_height = Some(MAX_SOURCE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    // The decoders' allocation limit does not cover every buffer (a GIF's
    // canvas is allocated whole, then copied): a 40-byte GIF declaring
    // 8,488 x 16,131 pixels took more than 1 GiB. The declared size is
    // judged first, at four bytes a pixel, before any pixel is decoded.
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) * 4 > MAX_DECODE_BYTES {
        return Err(ThumbnailError::TooLarge);
    }
    // Photos are often stored sideways with an EXIF orientation.
    let orientation = decoder.orientation().map_err(decode_error)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    image.apply_orientation(orientation);

    let image = resize(image, size);
    let mut out = Vec::new();
    if format == ImageFormat::Jpeg {
        let encoder = JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY);
        DynamicImage::ImageRgb8(image.to_rgb8())
            .write_with_encoder(encoder)
            .map_err(|e| ThumbnailError::Encode(e.to_string()))?;
        Ok(Thumbnail {
            bytes: out,
            content_type: "image/jpeg",
        })
    } else {
        image
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .map_err(|e| ThumbnailError::Encode(e.to_string()))?;
        Ok(Thumbnail {
            bytes: out,
            content_type: "image/png",
        })
    }
}

fn decode_error(e: ImageError) -> ThumbnailError {
    match e {
        ImageError::Limits(_) => ThumbnailError::TooLarge,
        e => ThumbnailError::Unsupported(e.to_string()),
    }
}

/// The thumbnail's dimensions for a source of `(w, h)`, and for `crop` the
/// centred region of the source `(x, y, w, h)` it is taken from.
fn plan(w: u32, h: u32, size: Size) -> ((u32, u32), (u32, u32, u32, u32)) {
    let (bw, bh) = (u64::from(size.width), u64::from(size.height));
    let (w64, h64) = (u64::from(w), u64::from(h));
    match size.method {
        Method::Scale => {
            if w <= size.width && h <= size.height {
                return ((w, h), (0, 0, w, h));
            }
            // The tighter of the two ratios bounds both sides.
            let (tw, th) = if w64 * bh > h64 * bw {
                (bw, (h64 * bw).div_ceil(w64).max(1).min(bh))
            } else {
                ((w64 * bh).div_ceil(h64).max(1).min(bw), bh)
            };
            ((tw as u32, th as u32), (0, 0, w, h))
        }
        Method::Crop => {
            // The largest region of the source with the box's proportions.
            let (rw, rh) = if w64 * bh > h64 * bw {
                (((h64 * bw) / bh).max(1), h64)
            } else {
                (w64, ((w64 * bh) / bw).max(1))
            };
            let (x, y) = ((w64 - rw) / 2, (h64 - rh) / 2);
            ((size.width, size.height), (x as u32, y as u32, rw as u32, rh as u32))
        }
    }
}

fn resize(image: DynamicImage, size: Size) -> DynamicImage {
    let ((tw, th), (x, y, rw, rh)) = plan(image.width(), image.height(), size);
    let region = if (x, y, rw, rh) == (0, 0, image.width(), image.height()) {
        image
    } else {
        image.crop_imm(x, y, rw, rh)
    };
    if (tw, th) == (region.width(), region.height()) {
        region
    } else {
        region.thumbnail_exact(tw, th)
    }
}

#[cfg(test)]
mod bomb_tests {
    use super::*;

    /// Found by the thumbnail fuzz target: a GIF whose logical screen is
    /// 8,488 x 16,131 pixels, in 40 bytes.
    #[test]
    fn a_tiny_gif_declaring_a_huge_canvas_is_refused_before_decoding() {
        let gif = [
            0x47, 0x49, 0x46, 0x38, 0x37, 0x61, 0x28, 0x21, 0x03, 0x3f, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0x2c, 0x28, 0,
            0xc2, 0, 0, 0x1e, 0, 0, 0x40, 0x08, 0x3a, 0x33, 0xdc, 0xc8, 0xb1, 0xa3, 0x3b,
        ];
        let size = Size::new(32, 32, Method::Scale).unwrap();
        assert!(matches!(generate(&gif, size), Err(ThumbnailError::TooLarge)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(width: u32, height: u32, method: Method) -> Size {
        Size { width, height, method }
    }

    #[test]
    fn scale_fits_within_and_keeps_the_aspect_ratio() {
        assert_eq!(plan(640, 480, size(320, 320, Method::Scale)).0, (320, 240));
        assert_eq!(plan(480, 640, size(320, 320, Method::Scale)).0, (240, 320));
        assert_eq!(plan(1000, 10, size(100, 100, Method::Scale)).0, (100, 1));
    }

    #[test]
    fn scale_never_enlarges() {
        assert_eq!(plan(64, 48, size(320, 240, Method::Scale)).0, (64, 48));
    }

    #[test]
    fn crop_fills_the_box_from_the_centre() {
        assert_eq!(
            plan(640, 480, size(96, 96, Method::Crop)),
            ((96, 96), (80, 0, 480, 480))
        );
        assert_eq!(
            plan(480, 640, size(96, 48, Method::Crop)),
            ((96, 48), (0, 200, 480, 240))
        );
    }

    #[test]
    fn oversized_requests_shrink_in_proportion() {
        let s = Size::new(10_000, 5_000, Method::Scale).expect("size");
        assert_eq!((s.width, s.height), (MAX_SIDE, MAX_SIDE / 2));
        assert!(Size::new(0, 5, Method::Crop).is_none());
    }

    #[test]
    fn generates_png_and_jpeg_of_the_planned_size() {
        let img = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(64, 32, image::Rgba([200, 10, 10, 128])));
        let mut png = Vec::new();
        img.write_to(&mut Cursor::new(&mut png), ImageFormat::Png).expect("png");
        let t = generate(&png, size(16, 16, Method::Crop)).expect("thumbnail");
        assert_eq!(t.content_type, "image/png");
        let back = image::load_from_memory(&t.bytes).expect("decode");
        assert_eq!((back.width(), back.height()), (16, 16));

        let mut jpeg = Vec::new();
        DynamicImage::ImageRgb8(img.to_rgb8())
            .write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg)
            .expect("jpeg");
        let t = generate(&jpeg, size(16, 16, Method::Scale)).expect("thumbnail");
        assert_eq!(t.content_type, "image/jpeg");
        assert_eq!(content_type_of(&t.bytes), "image/jpeg");
        let back = image::load_from_memory(&t.bytes).expect("decode");
        assert_eq!((back.width(), back.height()), (16, 8));
    }

    #[test]
    fn refuses_what_is_not_an_image() {
        assert!(matches!(
            generate(b"%PDF-1.7 not an image", size(16, 16, Method::Scale)),
            Err(ThumbnailError::Unsupported(_))
        ));
    }
}
