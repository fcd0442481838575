//! How connections to the database are made: plain or rustls.

use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How connections to the database are secured.
#[derive(Clone)]
pub(crate) enum Tls {
    /// Plain TCP (or a Unix socket).
    None,
    /// TLS with rustls; `sslmode` in the connection settings decides
    /// whether it is required.
    Rustls(MakeRustlsConnect),
}

/// A connection's messages (notifications, notices), polled to drive it.
pub(crate) type ConnectionMessages = std::pin::Pin<
    Box<
        dyn futures_util::Stream<Item = Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>>
            + Send,
    >,
>;

impl Tls {
    /// Opens one connection outside the pool (the listener's).
    pub(crate) async fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<(tokio_postgres::Client, ConnectionMessages), tokio_postgres::Error> {
        fn messages<S, T>(mut connection: tokio_postgres::Connection<S, T>) -> ConnectionMessages
        where
            S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
            T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        {
            Box::pin(futures_util::stream::poll_fn(move |cx| {
                connection.poll_message(cx)
            }))
        }
        match self {
            Self::None => {
                let (client, connection) = config.connect(NoTls).await?;
                Ok((client, messages(connection)))
            }
            Self::Rustls(tls) => {
                let (client, connection) = config.connect(tls.clone()).await?;
                Ok((client, messages(connection)))
            }
        }
    }
}
