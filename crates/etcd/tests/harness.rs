//! The test harness itself: a real etcd starts, answers, survives a kill and restart with its
//! data.

use graylane_testing::etcd::EtcdServer;

#[test]
fn a_killed_etcd_restarts_on_the_same_port_and_data() {
    let mut etcd = EtcdServer::start();
    let url = etcd.url();
    assert!(url.starts_with("http://127.0.0.1:"));
    assert!(std::net::TcpStream::connect(("127.0.0.1", etcd.port)).is_ok());
    etcd.kill();
    assert!(std::net::TcpStream::connect(("127.0.0.1", etcd.port)).is_err());
    etcd.restart();
    assert!(std::net::TcpStream::connect(("127.0.0.1", etcd.port)).is_ok());
    assert!(etcd.data_dir().join("member").is_dir());
}
