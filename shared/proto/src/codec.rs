//! The codec of every generated Mosaic server and client: prost's, except
//! that a message that does not decode is the sender's error, not ours.
//! `tonic-prost` answers INTERNAL for it; here it is INVALID_ARGUMENT with
//! `google.rpc` details, naming the field when the decoder says where it
//! failed (`contact.metadata`), so clients learn what to fix and the
//! server-error rate only counts the server's faults.
//!
//! A `google.protobuf.Struct` nested past the decoder's recursion limit gets
//! the same answer as one the validators refuse (`mosaic_api::parse`'s
//! depth limit is lower): INVALID_ARGUMENT, reason `INVALID_ARGUMENT`, the
//! field, "nested deeper than 32 levels".

use std::marker::PhantomData;

use mosaic_api::ApiError;
use mosaic_api::parse::MAX_JSON_DEPTH;
use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// `tonic_prost::ProstCodec` with [`MosaicDecoder`].
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = MosaicDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        MosaicDecoder(PhantomData)
    }
}

/// Decodes with prost; a failure is the sender's error.
#[derive(Debug, Clone, Default)]
pub struct MosaicDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for MosaicDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        U::decode(buf)
            .map(Some)
            .map_err(|error| decode_error(&error.to_string()).into())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// The well-known types a request field can nest without bound.
const NESTING_TYPES: [&str; 3] = ["Struct", "Value", "ListValue"];

/// The client's error for prost's description of a decode failure:
/// `failed to decode Protobuf message: Value.kind: Struct.fields: Contact.metadata:
/// CreateContactRequest.contact: recursion limit reached` (innermost first).
fn decode_error(described: &str) -> ApiError {
    let rest = described
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(described);
    let mut parts: Vec<&str> = rest.split(": ").collect();
    let why = parts.pop().unwrap_or_default();
    // Innermost first: walk from the request outwards, stop at the first
    // well-known nesting type (its inner fields mean nothing to a client).
    let located: Vec<(&str, &str)> = parts
        .iter()
        .filter_map(|part| part.split_once('.'))
        .collect();
    let mut path = Vec::new();
    for (message, field) in located.iter().rev() {
        if NESTING_TYPES.contains(message) {
            break;
        }
        path.push(*field);
    }
    let nested = located
        .iter()
        .any(|(message, _)| NESTING_TYPES.contains(message));
    if path.is_empty() {
        return ApiError::malformed_request(format!("the request could not be decoded: {why}"));
    }
    let field = path.join(".");
    if why == "recursion limit reached" && nested {
        ApiError::invalid_argument(field, format!("nested deeper than {MAX_JSON_DEPTH} levels"))
    } else {
        ApiError::invalid_argument(field, format!("could not be decoded: {why}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_failures_name_the_request_field() {
        let deep = decode_error(
            "failed to decode Protobuf message: Value.kind: Struct.fields: Value.kind: \
             Struct.fields: Contact.metadata: CreateContactRequest.contact: recursion limit reached",
        );
        assert_eq!(deep.code(), tonic::Code::InvalidArgument);
        assert_eq!(deep.reason(), "INVALID_ARGUMENT");
        assert_eq!(deep.violations()[0].field, "contact.metadata");
        assert_eq!(
            deep.violations()[0].description,
            "nested deeper than 32 levels"
        );

        let utf8 = decode_error(
            "failed to decode Protobuf message: Company.display_name: \
             CreateCompanyRequest.company: invalid string value: data is not UTF-8 encoded",
        );
        assert_eq!(utf8.violations()[0].field, "company.display_name");

        let garbage = decode_error("failed to decode Protobuf message: invalid wire type value: 7");
        assert_eq!(garbage.reason(), "MALFORMED_REQUEST");
        assert!(garbage.violations().is_empty());
    }

    #[test]
    fn prost_describes_failures_as_expected() {
        // The format this module reads: innermost location first.
        use crate::crm::{Company, CreateCompanyRequest};
        let mut bytes = CreateCompanyRequest {
            company: Some(Company {
                display_name: "x".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec();
        // The last byte is the one-character name: make it invalid UTF-8.
        let last = bytes.len() - 1;
        bytes[last] = 0xff;
        let error = CreateCompanyRequest::decode(bytes.as_slice()).unwrap_err();
        let answer = decode_error(&error.to_string());
        assert_eq!(
            answer.violations()[0].field,
            "company.display_name",
            "{error}"
        );
    }
}
