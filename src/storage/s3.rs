//! The S3 backend, on `aws-sdk-s3`.
//!
//! The client is built from explicit settings, never from `aws-config`'s default chain:
//! that chain probes the EC2 instance-metadata service with one-second timeouts when the
//! environment lacks a region or keys, which would add seconds to every `restore_command`.
//! Instance metadata is used only when `AWS_INSTANCE_PROFILE`/`--aws-instance-profile` asks
//! for it. The SDK's own retries are off: [`crate::retry`] retries whole operations,
//! including bodies that break mid-stream, within `WALE_RETRIES` and a deadline.

use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::endpoint::{
    Endpoint as SdkEndpoint, EndpointFuture, Params, ResolveEndpoint,
};
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials as SdkCredentials, Region, RequestChecksumCalculation,
    ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_types::endpoint::EndpointAuthScheme;

use super::{
    Body, Error, Listing, ObjectMeta, ObjectReader, Storage, error_chain, innermost,
    refuses_connections, unix_parts,
};
use crate::config::{Addressing, Credentials, Endpoint, S3Config, bucket_is_subdomain_compatible};
use crate::time::civil_utc;

/// Region used to sign requests to a custom endpoint when `AWS_REGION` is unset, and to
/// ask AWS where a bucket lives.
const DEFAULT_REGION: &str = "us-east-1";

/// boto's socket timeout under WAL-E was 5 s; connecting should never take longer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A response that sends nothing for this long is treated as a stalled connection.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A bucket and the client that reads it.
pub struct S3Store {
    client: Client,
    bucket: String,
}

impl S3Store {
    /// Builds the client; asks S3 for the bucket's region only when neither `AWS_REGION`
    /// nor `WALE_S3_ENDPOINT` says where to go.
    pub async fn connect(config: &S3Config) -> Result<S3Store, Error> {
        let region = match (&config.region, &config.endpoint) {
            (Some(region), _) => region.clone(),
            (None, Some(_)) => DEFAULT_REGION.to_string(),
            (None, None) => discover_region(config).await?,
        };
        Ok(S3Store {
            client: Client::from_conf(client_config(config, &region)),
            bucket: config.bucket.clone(),
        })
    }

    fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        key: &str,
        err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> Error {
        classify(self.url(key), err)
    }

    async fn list_page(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
        out: &mut Listing,
    ) -> Result<Option<String>, Error> {
        let page = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_delimiter(delimiter.map(str::to_string))
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| self.classify(prefix, e))?;
        out.objects
            .extend(page.contents().iter().filter_map(object_meta));
        out.common_prefixes.extend(
            page.common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(str::to_string)),
        );
        Ok(page
            .is_truncated()
            .unwrap_or(false)
            .then(|| page.next_continuation_token().map(str::to_string))
            .flatten())
    }
}

impl S3Store {
    async fn get_object(&self, key: &str, offset: Option<u64>) -> Result<ObjectReader, Error> {
        let output = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_range(offset.map(|o| format!("bytes={o}-")))
            .send()
            .await
            .map_err(|e| self.classify(key, e))?;
        let size = output.content_length().and_then(|n| u64::try_from(n).ok());
        Ok(ObjectReader {
            url: self.url(key),
            size,
            body: Body::Async(Box::pin(output.body.into_async_read())),
        })
    }
}

impl Storage for S3Store {
    async fn get(&self, key: &str) -> Result<ObjectReader, Error> {
        self.get_object(key, None).await
    }

    async fn get_range(&self, key: &str, offset: u64) -> Result<ObjectReader, Error> {
        self.get_object(key, Some(offset)).await
    }

    async fn list(&self, prefix: &str, delimiter: Option<&str>) -> Result<Listing, Error> {
        let mut listing = Listing::default();
        let mut token = None;
        loop {
            token = self
                .list_page(prefix, delimiter, token, &mut listing)
                .await?;
            if token.is_none() {
                break;
            }
        }
        Ok(listing.sorted())
    }

    async fn list_after(
        &self,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, Error> {
        let page = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .delimiter("/")
            .start_after(start_after)
            .max_keys(i32::try_from(limit.clamp(1, 1000)).unwrap_or(1000))
            .send()
            .await
            .map_err(|e| self.classify(prefix, e))?;
        let mut objects: Vec<ObjectMeta> = page.contents().iter().filter_map(object_meta).collect();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        objects.truncate(limit);
        Ok(objects)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, Error> {
        let output = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.classify(key, e))?;
        let modified = output
            .last_modified()
            .and_then(|t| SystemTime::try_from(*t).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Ok(ObjectMeta {
            key: key.to_string(),
            size: output.content_length().unwrap_or(0).max(0) as u64,
            last_modified_text: s3_listing_time(modified),
            modified,
        })
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}

/// One listed object as wale describes it (keyless entries, which S3 never sends, are
/// skipped).
fn object_meta(object: &aws_sdk_s3::types::Object) -> Option<ObjectMeta> {
    let modified = object
        .last_modified()
        .and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Some(ObjectMeta {
        key: object.key()?.to_string(),
        size: object.size().unwrap_or(0).max(0) as u64,
        last_modified_text: s3_listing_time(modified),
        modified,
    })
}

/// The SDK configuration for WAL-E's settings, with addressing chosen as WAL-E does.
fn client_config(config: &S3Config, region: &str) -> aws_sdk_s3::Config {
    let mut builder = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(READ_TIMEOUT)
                .build(),
        )
        // WAL-E's objects carry no flexible checksums, and some S3-compatible stores
        // reject the SDK's new default ones.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    builder = match &config.credentials {
        Credentials::Static {
            access_key_id,
            secret_access_key,
            session_token,
        } => builder.credentials_provider(SdkCredentials::new(
            access_key_id,
            secret_access_key,
            session_token.clone(),
            None,
            "wale-environment",
        )),
        Credentials::InstanceProfile => builder.credentials_provider(
            aws_config::imds::credentials::ImdsCredentialsProvider::builder().build(),
        ),
    };
    if config.endpoint.as_ref().is_some_and(|e| !e.secure) {
        // Plain HTTP (a store on the local network): no TLS stack, so no reading of the
        // system's CA certificates at every start (about 2 ms per restore_command call).
        builder = builder.http_client(aws_smithy_http_client::Builder::new().build_http());
    }
    match &config.endpoint {
        Some(endpoint) => match endpoint.addressing {
            Addressing::Path => builder
                .endpoint_url(endpoint.base_url(&endpoint.host))
                .force_path_style(true),
            Addressing::Subdomain => builder
                .endpoint_url(endpoint.base_url(&endpoint.host))
                .force_path_style(false),
            Addressing::VirtualHost => builder.endpoint_resolver(BucketIsHost {
                endpoint: endpoint.clone(),
                region: region.to_string(),
            }),
        },
        None => builder.force_path_style(!bucket_is_subdomain_compatible(&config.bucket)),
    }
    .build()
}

/// WAL-E's `virtualhost` convention: the bucket name is the host name (CNAME style), on the
/// endpoint's scheme and port.
#[derive(Debug)]
struct BucketIsHost {
    endpoint: Endpoint,
    region: String,
}

impl ResolveEndpoint for BucketIsHost {
    fn resolve_endpoint<'a>(&'a self, params: &'a Params) -> EndpointFuture<'a> {
        let host = params.bucket().unwrap_or(&self.endpoint.host);
        let endpoint = SdkEndpoint::builder()
            .url(self.endpoint.base_url(host))
            .auth_scheme(
                EndpointAuthScheme::with_capacity("sigv4", 3)
                    .put("disableDoubleEncoding", true)
                    .put("signingName", "s3".to_string())
                    .put("signingRegion", self.region.clone()),
            )
            .build();
        EndpointFuture::ready(Ok(endpoint))
    }
}

/// Asks S3 where the bucket lives: `HeadBucket` answers with `x-amz-bucket-region`, even
/// on the redirect or error a wrong region produces.
async fn discover_region(config: &S3Config) -> Result<String, Error> {
    let url = format!("s3://{}", config.bucket);
    let probe = Client::from_conf(client_config(config, DEFAULT_REGION));
    let region = match probe.head_bucket().bucket(&config.bucket).send().await {
        Ok(output) => Some(output.bucket_region().unwrap_or(DEFAULT_REGION).to_string()),
        Err(err) => {
            let from_header = err
                .raw_response()
                .and_then(|r| r.headers().get("x-amz-bucket-region"))
                .map(str::to_string);
            match from_header {
                Some(region) => Some(region),
                None => {
                    return Err(classify(url, err).explained(
                        "cannot ask S3 for the bucket's region (set AWS_REGION to skip this lookup)",
                    ));
                }
            }
        }
    };
    let region = region.ok_or_else(|| Error::Permanent {
        url: url.clone(),
        detail: "cannot determine the bucket's region: set AWS_REGION".into(),
    })?;
    tracing::info!(bucket = %config.bucket, %region, "AWS_REGION is not set; asked S3 for the bucket's region (set AWS_REGION to skip this request)");
    Ok(region)
}

/// Sorts an SDK failure into wale's classes. Only a 404 for a key is "not found"; a
/// missing bucket is a configuration error, never an absent WAL file.
fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    url: String,
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Error {
    match &err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let code = ctx.err().code().unwrap_or_default();
            let message = ctx.err().message().unwrap_or_default();
            let described = if code.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status} {code}: {message}")
            };
            classify_status(url, status, code, described)
        }
        SdkError::TimeoutError(_) => Error::Transient {
            url,
            detail: "timed out".into(),
        },
        SdkError::ResponseError(_) => Error::Transient {
            url,
            detail: format!("bad response: {}", error_chain(&err)),
        },
        SdkError::DispatchFailure(failure) if !failure.is_user() => {
            let detail = format!("cannot connect: {}", innermost(&err));
            if refuses_connections(&err) {
                Error::Unreachable { url, detail }
            } else {
                Error::Transient { url, detail }
            }
        }
        _ => Error::Permanent {
            url,
            detail: error_chain(&err),
        },
    }
}

fn classify_status(url: String, status: u16, code: &str, described: String) -> Error {
    match (status, code) {
        (_, "NoSuchBucket") => Error::Permanent {
            url,
            detail: format!("{described} (the bucket does not exist; check WALE_S3_PREFIX)"),
        },
        (404, _) => Error::NotFound { url },
        (_, "InvalidObjectState") => Error::Permanent {
            url,
            detail: format!(
                "{described} (the object is archived, e.g. in GLACIER; restore it before fetching)"
            ),
        },
        (_, "ExpiredToken" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied")
        | (401 | 403, _) => Error::AccessDenied {
            url,
            detail: described,
        },
        (_, "PermanentRedirect" | "AuthorizationHeaderMalformed") | (301, _) => Error::Permanent {
            url,
            detail: format!("{described} (wrong region? check AWS_REGION)"),
        },
        (_, "SlowDown" | "Throttling" | "RequestTimeout" | "InternalError")
        | (408 | 429 | 500..=599, _) => Error::Transient {
            url,
            detail: described,
        },
        _ => Error::Permanent {
            url,
            detail: described,
        },
    }
}

/// S3's listing time format, as boto handed it to WAL-E: `2026-11-25T00:48:14.253Z`.
fn s3_listing_time(t: SystemTime) -> String {
    let (secs, nanos) = unix_parts(t);
    let (y, mo, d, h, mi, s) = civil_utc(secs);
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
        nanos / 1_000_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        let url = || "s3://b/k".to_string();
        let c = |status, code: &str| classify_status(url(), status, code, String::new());
        assert!(matches!(c(404, "NoSuchKey"), Error::NotFound { .. }));
        assert!(matches!(c(404, ""), Error::NotFound { .. }));
        assert!(matches!(c(404, "NoSuchBucket"), Error::Permanent { .. }));
        assert!(matches!(c(403, "AccessDenied"), Error::AccessDenied { .. }));
        assert!(matches!(c(400, "ExpiredToken"), Error::AccessDenied { .. }));
        assert!(matches!(
            c(403, "InvalidObjectState"),
            Error::Permanent { .. }
        ));
        assert!(c(503, "SlowDown").is_retryable());
        assert!(c(500, "").is_retryable());
        assert!(c(429, "").is_retryable());
        assert!(!c(400, "InvalidArgument").is_retryable());
        assert!(matches!(
            c(301, "PermanentRedirect"),
            Error::Permanent { .. }
        ));
    }

    #[test]
    fn listing_time_has_milliseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_795_567_694, 253_900_000);
        assert_eq!(s3_listing_time(t), "2026-11-25T00:48:14.253Z");
    }
}
